"""Compact storage of what a trace records: bits packed eight per byte and integers in the narrowest type.

A KVCrush trace at 16k tokens with Llama-3.1-8B's heads (32 query heads) holds a `[16k, 32]` signature matrix
and `[8, 4k]` kept positions per layer; as bool and int64 that is 768 KiB, packed and narrowed 192 KiB. Every
function here runs on the tensor's own device (no host sync), so a selection can compact its records before
they travel to the host.
"""

from __future__ import annotations

import torch


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """`[..., width]` bool -> `[..., ceil(width / 8)]` uint8, eight columns per byte, least significant first
    (numpy's `packbits(..., bitorder="little")`)."""
    width = bits.shape[-1]
    n_bytes = -(-width // 8)
    padded = torch.zeros((*bits.shape[:-1], n_bytes * 8), dtype=torch.uint8, device=bits.device)
    padded[..., :width] = bits
    # Eight strided ORs over `[..., n_bytes]`: on a CPU, several times cheaper than a weighted sum over a last
    # dimension of 8 (and than `F.pad`, which takes a slow path for uint8).
    packed = padded[..., 0::8].clone()
    for bit in range(1, 8):
        packed |= padded[..., bit::8] << bit
    return packed


def unpack_bits(packed: torch.Tensor, width: int) -> torch.Tensor:
    """Inverse of `pack_bits`: `[..., bytes]` uint8 -> `[..., width]` bool."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = (packed[..., None] >> shifts) & 1
    return bits.reshape(*packed.shape[:-1], -1)[..., :width].bool()


def index_dtype(largest: int) -> torch.dtype:
    """The integer type for positions and unit ids up to `largest`: int32, or int64 beyond 2**31 - 1.

    Not narrower: PyTorch indexes with int32 and int64 tensors only (an int16 tensor is refused, a uint8 one
    is read as a mask), and a trace's positions are meant to index (`scores[:, trace.kept[h]]`).
    """
    return torch.int32 if largest <= torch.iinfo(torch.int32).max else torch.int64


def small_dtype(largest: int) -> torch.dtype:
    """The narrowest signed integer type holding 0..`largest`, for values that are not positions (Hamming
    distances, anchor ids): int8, int16 or int32. Signed, so that using one as an index fails loudly instead
    of being read as a mask."""
    for dtype in (torch.int8, torch.int16, torch.int32):
        if largest <= torch.iinfo(dtype).max:
            return dtype
    return torch.int64


def narrowed(tensor: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """`tensor` as `dtype` (on its device; the same object when it already is)."""
    return tensor if tensor is None or tensor.dtype == dtype else tensor.to(dtype)


__all__ = ["pack_bits", "unpack_bits", "index_dtype", "small_dtype", "narrowed"]
