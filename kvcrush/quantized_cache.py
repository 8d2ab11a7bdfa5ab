"""A `DynamicCache` layer that stores its rows quantized, at one or several precisions, in row order.

Layout of one layer (batch 1 in this engine, any batch works):
- quantized rows, grouped by precision: each group holds `[batch, kv_heads, n_bits, ...]` codes
  (`kvcrush.quant.QuantizedRows`, or plain tensors at 16 bits) and, when there is more than one group,
  `slots` `[kv_heads, n_bits]` int16: where each of its rows sits among the layer's quantized rows
  (heads keep different positions, so one precision's rows sit at different slots per head);
- a residual window of the newest rows in the model's dtype (KIVI's residual, Liu et al. 2024).

Attention gets the rows back in their order (dequantized on the fly, as transformers' own
`QuantizedLayer` does), so everything that maps rows to token positions (traces, decode-time
eviction) works unchanged; only the stored tensors shrink, and `stored_bytes` counts exactly them.
New tokens enter the residual window; once it holds twice `residual_rows`, the oldest rows leave it,
quantized at `kv_bits` (in blocks, as KIVI flushes its residual, so a decoding step rarely quantizes).
Keys and values are stored together (`[2 * batch, ...]`: keys, then values), so each decoding step
dequantizes a layer with one set of operations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import DynamicLayer

from kvcrush.quant import KVStorage, QuantizedRows, dequantize, quantize


@dataclass
class _Group:
    """The quantized rows of one precision. rows: keys then values on the batch axis, `[2 * batch, kv_heads,
    n, ...]` (`QuantizedRows`, or a plain tensor at 16 bits)."""

    bits: int
    rows: QuantizedRows | torch.Tensor
    slots: torch.Tensor | None = None  # [kv_heads, n] int16; None: the only group, in order

    @property
    def count(self) -> int:
        return int(self.rows.shape[-2]) if isinstance(self.rows, torch.Tensor) else self.rows.rows

    @property
    def nbytes(self) -> int:
        total = 0 if self.slots is None else self.slots.numel() * self.slots.element_size()
        rows = self.rows
        return total + (rows.numel() * rows.element_size() if isinstance(rows, torch.Tensor) else rows.nbytes)


def _slots(index: torch.Tensor, rows: int) -> torch.Tensor:
    """Slot indices below `rows` (a host count) in the smallest integer type that holds them (int16 below
    32768 rows)."""
    return index.to(torch.int16 if rows <= 2**15 else torch.int32)


def _padded_slots(mask: torch.Tensor, width: int) -> torch.Tensor:
    """`[kv_heads, width]` slots of the True entries of `mask` `[kv_heads, rows]`, ascending per head; `width`:
    the most True entries of any head (known on the host).

    Heads with fewer entries (a representative that falls in one head's residual window and not in
    another's) are padded with -1: a padding row is stored (and counted) but never read back.
    """
    counts = mask.sum(dim=-1)
    order = torch.sort((~mask).to(torch.int8), dim=-1, stable=True).indices[:, :width]  # True entries first
    valid = torch.arange(width, device=mask.device)[None, :] < counts[:, None]
    return torch.where(valid, order, torch.full_like(order, -1))


def _store(rows: torch.Tensor, bits: int) -> QuantizedRows | torch.Tensor:
    return rows.contiguous() if bits == 16 else quantize(rows, bits)


def _load(rows: QuantizedRows | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return rows if isinstance(rows, torch.Tensor) else dequantize(rows, dtype)


def _cat(a: QuantizedRows | torch.Tensor, b: QuantizedRows | torch.Tensor) -> QuantizedRows | torch.Tensor:
    if isinstance(a, torch.Tensor):
        return torch.cat([a, b], dim=-2)
    return QuantizedRows(torch.cat([a.packed, b.packed], dim=-2), torch.cat([a.scale, b.scale], dim=-2),
                         torch.cat([a.zero, b.zero], dim=-2), a.bits, a.group)


class QuantizedKVLayer(DynamicLayer):
    """One layer's keys and values stored at `storage`'s precisions (see the module docstring).

    `keys` / `values` read the whole layer back, dequantized, `[batch, kv_heads, rows, head_dim]`;
    write rows with `set_rows`, never by assigning `keys` / `values`.
    """

    def __init__(self, storage: KVStorage) -> None:
        self._groups: list[_Group] = []
        self._residual: torch.Tensor | None = None  # [2 * batch, kv_heads, r, d]: keys, then values
        self._quantized = 0  # rows held outside the residual window, per head (a host count: no device read)
        self._batch = 0
        self.storage = storage
        super().__init__()

    # --- the DynamicLayer interface ------------------------------------------------------------------
    @property
    def keys(self) -> torch.Tensor | None:
        return None if self._residual is None else self._read()[: self._batch]

    @keys.setter
    def keys(self, value: torch.Tensor | None) -> None:
        if value is not None:
            raise TypeError("A quantized layer's rows are written with set_rows(keys, values, row_bits).")

    @property
    def values(self) -> torch.Tensor | None:
        return None if self._residual is None else self._read()[self._batch :]

    @values.setter
    def values(self, value: torch.Tensor | None) -> None:
        if value is not None:
            raise TypeError("A quantized layer's rows are written with set_rows(keys, values, row_bits).")

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self._batch = int(key_states.shape[0])
        self._residual = torch.cat([key_states[..., :0, :], value_states[..., :0, :]])
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention over every stored row and the new ones; the new rows join the residual window.

        The extra arguments (nothing this layer needs) are `cache_kwargs` in transformers 5.2, `kwargs=` later."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = torch.cat([key_states, value_states])
        rows = self._read(new)
        self._residual = torch.cat([self._residual, new], dim=-2)
        self._flush_residual()
        return rows[: self._batch], rows[self._batch :]

    def get_seq_length(self) -> int:
        if not self.is_initialized:
            return 0
        return self.quantized_rows + int(self._residual.shape[-2])

    def crop(self, max_length: int) -> None:
        raise NotImplementedError("A quantized KV layer cannot be cropped.")

    # --- storage -------------------------------------------------------------------------------------
    @property
    def quantized_rows(self) -> int:
        """Rows held outside the residual window (padding rows, see `_padded_slots`, not counted)."""
        return self._quantized

    def stored_bytes(self) -> int:
        """Bytes really held: every group's codes, scales, zero points and slots, plus the residual window."""
        residual = 0 if self._residual is None else self._residual.numel() * self._residual.element_size()
        return residual + sum(group.nbytes for group in self._groups)

    def set_rows(self, keys: torch.Tensor, values: torch.Tensor, row_bits: torch.Tensor,
                 host_bits: torch.Tensor | None = None) -> None:
        """Store `keys` / `values` `[batch, kv_heads, T, d]`, row `t` of head `h` at `row_bits[h, t]` bits.

        Rows at 16 bits at the end of every head form the residual window. A precision may cover a
        different number of rows in different heads (a representative can sit in one head's residual
        window and not in another's): its group is padded to the largest count (`_padded_slots`).
        The counts that size the groups are read from a CPU copy of `row_bits`: `host_bits` when the caller
        has one (decode-time eviction moves every layer's at once), else `row_bits` itself when it is on the
        CPU (a compressed copy's), else one copy here.
        """
        if not self.is_initialized:
            self.lazy_initialization(keys, values)
        both = torch.cat([keys, values])
        host = host_bits if host_bits is not None else row_bits.to("cpu")
        row_bits = row_bits.to(keys.device)
        tail = int((host == 16).flip(-1).int().cumprod(-1).sum(-1).min()) if host.numel() else 0
        tail = min(tail, self.storage.residual_rows) if self.storage.quantized else int(host.shape[-1])
        body = int(host.shape[-1]) - tail
        self._residual = both[..., body:, :].contiguous()
        self._quantized = body
        self._groups = []
        body_bits = host[:, :body]
        present = sorted({int(b) for b in torch.unique(body_bits).tolist()}, reverse=True) if body else []
        if len(present) == 1:  # one precision: the rows stay in order, no slots
            self._groups.append(_Group(present[0], _store(both[..., :body, :], present[0])))
            return
        for bits in present:
            width = int((body_bits == bits).sum(dim=-1).max())
            slots = _padded_slots(row_bits[:, :body] == bits, width)
            index = slots.clamp_min(0)[None, :, :, None].expand(both.shape[0], -1, -1, both.shape[-1])
            self._groups.append(_Group(bits, _store(torch.gather(both[..., :body, :], 2, index), bits),
                                       _slots(slots, body)))

    def _flush_residual(self) -> None:
        """Once the residual window holds twice `residual_rows`, the oldest rows leave it, quantized at `kv_bits`
        and appended in order (every decoding step would otherwise quantize one row and copy every group)."""
        size = self.storage.residual_rows
        held = int(self._residual.shape[-2])
        if not self.storage.quantized or held < max(2 * size, 1):
            return
        overflow = held - size
        leaving, self._residual = self._residual[..., :overflow, :], self._residual[..., overflow:, :]
        bits = self.storage.kv_bits
        start = self.quantized_rows
        heads = leaving.shape[1]
        group = next((g for g in self._groups if g.bits == bits), None)
        if group is None:
            group = _Group(bits, _store(leaving[..., :0, :], bits))
            if self._groups:
                group.slots = torch.zeros((heads, 0), dtype=torch.int16, device=leaving.device)
            self._groups.append(group)
        if len(self._groups) > 1:
            for other in self._groups:  # a group that was alone in order gets explicit slots now
                if other.slots is None:
                    other.slots = _slots(torch.arange(other.count, device=leaving.device).expand(heads, -1),
                                         other.count)
            new = torch.arange(start, start + overflow, device=leaving.device).expand(heads, -1)
            group.slots = _slots(torch.cat([group.slots.long(), new], dim=1), start + overflow)
        group.rows = _cat(group.rows, _store(leaving, bits))
        self._quantized += overflow

    def _read(self, new: torch.Tensor | None = None) -> torch.Tensor:
        """Every row, dequantized, in order, then `new`: `[2 * batch, kv_heads, rows (+ new), d]` (keys, then
        values; one concatenation)."""
        tail = [self._residual] if new is None else [self._residual, new]
        if not self._groups:
            return torch.cat(tail, dim=-2) if new is not None else self._residual
        parts = [(_load(g.rows, self.dtype), g.slots) for g in self._groups]
        if len(parts) == 1:
            return torch.cat([parts[0][0], *tail], dim=-2)
        batch, heads, _, dim = self._residual.shape
        count = self.quantized_rows
        rows = self._residual.new_empty((batch, heads, count + 1, dim))  # the last row takes padding (never read)
        for part, slots in parts:
            slots = torch.where(slots < 0, count, slots.long())
            rows.scatter_(2, slots[None, :, :, None].expand(batch, -1, -1, dim), part)
        return torch.cat([rows[..., :count, :], *tail], dim=-2)

    def row_bits(self) -> torch.Tensor:
        """`[kv_heads, rows]` int8: the precision each row is stored at now (16 in the residual window)."""
        heads = int(self._residual.shape[1])
        bits = torch.full((heads, self.get_seq_length() + 1), 16, dtype=torch.int8)  # last column: padding
        for group in self._groups:
            if group.slots is None:
                bits[:, : group.count] = group.bits
            else:
                slots = group.slots.long().cpu()
                bits.scatter_(1, torch.where(slots < 0, self.get_seq_length(), slots), group.bits)
        return bits[:, :-1]
