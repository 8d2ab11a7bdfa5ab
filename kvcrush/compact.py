"""Compact storage of what a trace records: bits packed eight per byte and integers in the narrowest type.

A KVCrush trace at 16k tokens with Llama-3.1-8B's heads (32 query heads) holds a `[16k, 32]` signature matrix
and `[8, 4k]` kept positions per layer; as bool and int64 that is 768 KiB, packed and narrowed 192 KiB. Every
function here runs on the tensor's own device (no host sync), so a selection can compact its records before
they travel to the host.
"""

from __future__ import annotations

import torch

_BIT_WEIGHTS = (1, 2, 4, 8, 16, 32, 64, 128)  # bit i of a packed byte is column 8 * byte + i (little-endian)


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """`[..., width]` bool -> `[..., ceil(width / 8)]` uint8, eight columns per byte, least significant first."""
    width = bits.shape[-1]
    padded = torch.nn.functional.pad(bits.to(torch.uint8), (0, -width % 8))
    grouped = padded.reshape(*bits.shape[:-1], -1, 8)
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device="cpu")
    if weights.device != bits.device:
        weights = weights.to(bits.device, non_blocking=True)
    return (grouped * weights).sum(dim=-1, dtype=torch.uint8)


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
