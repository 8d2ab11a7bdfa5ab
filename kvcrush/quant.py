"""Integer storage for KV rows: per-token groups along the head dimension, with a scale and a zero point.

Each row `x` of `head_dim` values (one token's key or value in one KV head) is cut into groups of
`GROUP_SIZE` consecutive values; each group stores `bits`-bit codes `q = round((x - zero) / scale)`
with `zero = min(group)` and `scale = (max - min) / (2**bits - 1)`, both kept in float16, so
`|x - (zero + scale * q)| <= scale / 2` plus float16 rounding. That is asymmetric min-max ("zero-point")
quantization as KIVI (Liu et al. 2024, "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache")
applies to values; we group keys per token as well, so any row can be evicted or gathered on its own.
Codes are packed `8 / bits` to a byte, so the stored tensors really shrink.

`KVStorage` is what a policy asks for (`kv_bits`, KVCrush's `representative_bits`) and the byte
arithmetic of one stored row, which `budget_bytes` budgets read (`kvcrush.budget.plan_budget_bytes`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KV_BITS = (16, 8, 4, 2)  # 16: no quantization, the model's own dtype
GROUP_SIZE = 64  # values per scale / zero pair (SmolLM2's whole head dimension)
RESIDUAL_ROWS = 8  # newest rows of each layer kept in full precision (KIVI's residual window)
SCALE_DTYPE = torch.float16
_SCALE_BYTES = 2


@dataclass
class QuantizedRows:
    """Rows `[..., rows, dim]` stored as packed codes.

    packed: `[..., rows, dim * bits / 8]` uint8 (`8 // bits` codes per byte, low bits first).
    scale / zero: `[..., rows, dim / group]` float16. bits: 8, 4 or 2. group: values per scale.
    """

    packed: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    bits: int
    group: int

    @property
    def rows(self) -> int:
        return int(self.packed.shape[-2])

    @property
    def nbytes(self) -> int:
        """Bytes really held: codes, scales and zero points."""
        return sum(t.numel() * t.element_size() for t in (self.packed, self.scale, self.zero))


def check_bits(bits: int, name: str = "kv_bits") -> int:
    if isinstance(bits, bool) or bits not in KV_BITS:
        raise ValueError(f"{name} must be one of {', '.join(map(str, KV_BITS))}, got {bits!r}.")
    return int(bits)


def group_size(dim: int) -> int:
    """Values per scale for rows of `dim` values: `GROUP_SIZE`, or the whole row when it does not divide."""
    return GROUP_SIZE if dim % GROUP_SIZE == 0 else dim


def quantize(rows: torch.Tensor, bits: int) -> QuantizedRows:
    """`rows` `[..., n, dim]` -> packed `bits`-bit codes with float16 scales and zero points per group."""
    check_bits(bits)
    if bits == 16:
        raise ValueError("16 bits means no quantization: keep the tensor as it is.")
    dim = rows.shape[-1]
    group = group_size(dim)
    if (dim * bits) % 8:
        raise ValueError(f"Rows of {dim} values cannot be packed at {bits} bits.")
    grouped = rows.float().unflatten(-1, (dim // group, group))  # [..., n, groups, group]
    low = grouped.amin(dim=-1)
    high = grouped.amax(dim=-1)
    levels = 2**bits - 1
    # Codes are computed with the float16 scale and zero that are stored, so dequantizing is consistent.
    zero = low.to(SCALE_DTYPE)
    scale = ((high - zero.float()) / levels).clamp_min(torch.finfo(SCALE_DTYPE).tiny).to(SCALE_DTYPE)
    codes = ((grouped - zero.float()[..., None]) / scale.float()[..., None]).round_().clamp_(0, levels)
    codes = codes.to(torch.uint8).flatten(-2)  # [..., n, dim]
    per_byte = 8 // bits
    if per_byte > 1:
        codes = codes.unflatten(-1, (dim // per_byte, per_byte))
        shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=rows.device)
        codes = (codes << shifts).sum(dim=-1, dtype=torch.uint8)  # disjoint bit fields: sum == or
    return QuantizedRows(codes.contiguous(), scale, zero, bits, group)


_UNPACKING: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}


def _unpacking(bits: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The shifts and mask that unpack `bits`-bit codes, made once per device (decoding unpacks every step)."""
    key = (bits, str(device))
    if key not in _UNPACKING:
        _UNPACKING[key] = (torch.arange(0, 8, bits, dtype=torch.uint8, device=device),
                           torch.full((), 2**bits - 1, dtype=torch.uint8, device=device))
    return _UNPACKING[key]


def dequantize(stored: QuantizedRows, dtype: torch.dtype) -> torch.Tensor:
    """The rows back as `[..., n, dim]` in `dtype` (a new tensor; the stored codes stay packed)."""
    codes = stored.packed
    if stored.bits < 8:
        shifts, mask = _unpacking(stored.bits, codes.device)
        codes = ((codes[..., None] >> shifts) & mask).flatten(-2)
    grouped = codes.float().unflatten(-1, (-1, stored.group))
    rows = grouped * stored.scale.float()[..., None] + stored.zero.float()[..., None]
    return rows.flatten(-2).to(dtype)


def row_bytes(bits: int, dim: int, element_size: int) -> int:
    """Bytes of one stored row of `dim` values (codes plus scale and zero points; `element_size` at 16)."""
    if bits == 16:
        return dim * element_size
    return dim * bits // 8 + (dim // group_size(dim)) * 2 * _SCALE_BYTES


@dataclass(frozen=True)
class KVStorage:
    """How a compressed cache stores its kept rows.

    kv_bits: rows kept by importance (and sink, recent, decoded tokens). representative_bits: KVCrush's
    representatives. residual_rows: the newest rows of each layer stay in the model's dtype, as KIVI
    keeps its recent tokens; while decoding, rows leave the residual window at `kv_bits`.
    """

    kv_bits: int = 16
    representative_bits: int = 16
    residual_rows: int = RESIDUAL_ROWS

    @property
    def quantized(self) -> bool:
        return self.kv_bits < 16 or self.representative_bits < 16

    @property
    def mixed(self) -> bool:
        return self.representative_bits != self.kv_bits

    def token_bytes(self, bits: int, head_dim: int, element_size: int) -> int:
        """Bytes of one token in one KV head at `bits`: its key row, its value row and, in a mixed-precision
        cache, its int16 slot (where the row sits among the layer's rows, `kvcrush.quantized_cache`)."""
        return 2 * row_bytes(bits, head_dim, element_size) + (2 if self.mixed else 0)

    def row_bits(self, kept: torch.Tensor, representatives: torch.Tensor | None) -> torch.Tensor:
        """`[kv_heads, T]` int8 storage bits of each kept row (`kept`: positions or slots, ascending per head).

        Rows in `representatives` (token positions) get `representative_bits`; the last `residual_rows`
        other rows 16 (the residual window; a representative never takes its place, so every head holds
        as many rows of each precision); the others `kv_bits`.
        """
        bits = torch.full_like(kept, self.kv_bits, dtype=torch.int8)  # on kept's device: no host read
        others = torch.ones_like(kept, dtype=torch.bool)
        if self.mixed and representatives is not None and representatives.numel():
            if representatives.device != kept.device:
                representatives = representatives.to(kept.device)
            others = ~torch.isin(kept, representatives)
            bits = bits.masked_fill(~others, self.representative_bits)
        if self.residual_rows and self.quantized:
            from_end = others.flip(-1).cumsum(dim=-1).flip(-1)  # other rows at or after each row
            bits = bits.masked_fill(others & (from_end <= self.residual_rows), 16)
        return bits
