"""The real KV cache: its size in bytes and building a compressed copy from kept rows.

One place counts KV bytes (the engine, the benchmark's kvpress runs and the app all read it), always
from the tensors themselves: `numel * element_size` of every layer's keys and values.
"""

from __future__ import annotations

import dataclasses

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from kvcrush.host import to_device
from kvcrush.quant import KVStorage
from kvcrush.quantized_cache import QuantizedKVLayer
from kvcrush.sliding import KeyPositions, has_sliding_layers, layer_windows
from kvcrush.trace import MergeRows


def layer_bytes(keys: torch.Tensor, values: torch.Tensor, n_tokens: int | None = None) -> int:
    """Bytes of one layer's keys and values `[batch, kv_heads, L, head_dim]`; only `n_tokens` rows when given
    (what the same layer would hold at that length)."""
    total = 0
    for tensor in (keys, values):
        per_row = tensor.numel() // max(tensor.shape[-2], 1)
        rows = tensor.shape[-2] if n_tokens is None else n_tokens
        total += per_row * rows * tensor.element_size()
    return total


def cache_bytes(cache: DynamicCache, n_tokens: int | None = None) -> int:
    """Bytes of every layer's keys and values (at `n_tokens` rows per layer when given).

    A quantized layer counts what it really stores (`QuantizedKVLayer.stored_bytes`: packed codes,
    scales, zero points, slots and the full-precision residual window); `n_tokens` does not apply to it.
    """
    total = 0
    for layer in cache.layers:
        if isinstance(layer, QuantizedKVLayer):
            total += layer.stored_bytes()
        elif isinstance(getattr(layer, "keys", None), torch.Tensor) and layer.keys.dim() == 4:
            total += layer_bytes(layer.keys, layer.values, n_tokens)
    return total


def cache_lengths(cache: DynamicCache) -> list[int]:
    """Tokens held per layer."""
    return [int(layer.get_seq_length()) for layer in cache.layers]


def set_layer_rows(cache: DynamicCache, index: int, keys: torch.Tensor, values: torch.Tensor,
                   storage: KVStorage | None = None, row_bits: torch.Tensor | None = None,
                   host_bits: torch.Tensor | None = None) -> None:
    """Make layer `index` hold `keys` / `values` `[1, kv_heads, T, d]`: as they are, or quantized.

    With a quantizing `storage`, row `t` of head `h` is stored at `row_bits[h, t]` bits (`KVStorage.row_bits`)
    in a `QuantizedKVLayer`, which replaces the plain layer; `host_bits` is a CPU copy of `row_bits` when the
    caller has one (`QuantizedKVLayer.set_rows`).
    """
    if storage is None or not storage.quantized:
        layer = cache.layers[index]
        if not layer.is_initialized:
            layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
        return
    if row_bits is None:
        raise ValueError("A quantized layer needs the storage bits of every row (KVStorage.row_bits).")
    layer = cache.layers[index]
    if not isinstance(layer, QuantizedKVLayer):
        layer = cache.layers[index] = QuantizedKVLayer(storage)
    layer.set_rows(keys, values, row_bits, host_bits)


def gather_rows(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tensor `[1, kv_heads, L, d]`, index `[kv_heads, T]` -> `[1, kv_heads, T, d]` (a new tensor)."""
    expanded = index.long()[None, :, :, None].expand(1, -1, -1, tensor.shape[-1])  # a trace's may be narrow
    return torch.gather(tensor, 2, expanded)


def merge_values(values: torch.Tensor, source: torch.Tensor, kept: torch.Tensor, rows: MergeRows | None) -> None:
    """Write merged value rows into a gathered cache layer, in place (spec section 7, `merge="values"`).

    values: `[1, kv_heads, T, d]` the rows `kept` (`[kv_heads, T]`, ascending per head) gathered from
    `source` `[1, kv_heads, N, d]`, which is only read. Each representative's row becomes the weighted
    sum of its bucket's member rows of `source` (`MergeRows`), accumulated in float32 and cast back.
    Representatives sit in every head's kept set, so their slots are found by a binary search per head.
    Idea: CaM (Zhang et al. 2024) and D2O (Wan et al. 2024) merge evicted entries into kept ones.
    """
    if rows is None or rows.targets.numel() == 0:
        return
    device = values.device
    heads, dim = values.shape[1], values.shape[-1]
    members = source[0].index_select(1, rows.members.to(device)).float()  # [kv_heads, P, d]
    weighted = rows.weights.to(device)[..., None] * members
    merged = torch.zeros(heads, rows.targets.numel(), dim, device=device).index_add_(1, rows.slot.to(device),
                                                                                    weighted)
    kept = kept.to(device).contiguous()
    where = torch.searchsorted(kept, rows.targets.to(device).expand(heads, -1).contiguous())  # [kv_heads, R]
    values[0].scatter_(1, where[..., None].expand(-1, -1, dim), merged.to(values.dtype))


def prompt_cache(config) -> DynamicCache:
    """An empty cache with a plain (growing) layer for every decoder layer, sliding-window ones included.

    A prepared prompt prefills into it so that scorers see every key a sliding layer attended to
    during the prefill (transformers' sliding layer would keep only its last `W - 1` rows); which of those
    rows a layer may keep is then `kvcrush.sliding.held_from`'s rule. The model's masks come from its
    config, not from the cache's layer types, so the prefill itself is unchanged.
    """
    cache = DynamicCache(config=config)
    cache.layers = [DynamicLayer() for _ in cache.layers]
    return cache


def compressed_copy(full: DynamicCache, kept: list[torch.Tensor | None], config,
                    merges: list[MergeRows | None] | None = None, storage: KVStorage | None = None,
                    row_bits: list[torch.Tensor | None] | None = None) -> DynamicCache:
    """A new cache whose layer i holds the rows `kept[i]` (`[kv_heads, T]`, or None: every row) of `full`.

    `full` is left untouched, so the next selection can gather from it again. A layer that keeps
    every row shares the full cache's tensors: decoding appends with `torch.cat`, which makes new
    tensors and never writes into the shared ones. `kept[i]` holds prompt positions, which are rows of
    `full` (a prepared prompt's cache holds every row). `merges[i]` (`LayerTrace.merge_rows()`) then merges
    value rows of the gathered copy from the intact full rows (`merge_values`). With a quantizing
    `storage`, layer i's rows are then stored at `row_bits[i]` (`[kv_heads, T]`) bits (`set_layer_rows`).
    For a model with sliding-window layers the copy carries `key_positions` (`kvcrush.sliding.KeyPositions`,
    the true position of every row), which the decoding loop's masks read.
    """
    cache = prompt_cache(config)
    merges = merges if merges is not None else [None] * len(kept)
    host_bits = row_bits if row_bits is not None else [None] * len(kept)
    devices = [source.keys.device for source in full.layers]
    kept, merges, bits_on_device = _on_layer_devices(devices, kept, merges, host_bits)
    for layer_index, (source, index, rows, bits, host) in enumerate(
            zip(full.layers, kept, merges, bits_on_device, host_bits, strict=True)):
        if index is None:
            keys, values = source.keys, source.values
        else:
            keys = gather_rows(source.keys, index)
            values = gather_rows(source.values, index)
            merge_values(values, source.values, index, rows)
        set_layer_rows(cache, layer_index, keys, values, storage, bits, host)
    if has_sliding_layers(config):
        positions = []
        for source, index in zip(full.layers, kept, strict=True):
            device = source.keys.device
            rows = torch.arange(source.keys.shape[-2], device=device).expand(source.keys.shape[1], -1)
            positions.append((rows if index is None else index)[None].contiguous())
        cache.key_positions = KeyPositions(positions, layer_windows(config))
    return cache


def _on_layer_devices(devices: list[torch.device], kept: list[torch.Tensor | None],
                      merges: list[MergeRows | None], row_bits: list[torch.Tensor | None],
                      ) -> tuple[list[torch.Tensor | None], list[MergeRows | None], list[torch.Tensor | None]]:
    """A selection's host tensors (kept rows, merge rows, storage bits of every layer) on their layers' devices,
    sent with one copy per device (`host.to_device`): a blocking copy per layer would make a GPU wait once per
    layer. The tensors come from a trace, which lives on the host (`trace.traces_to_host`); on a CPU-only run the
    copy is a cheap repack, and the code path is the one a GPU run takes."""
    moving: list[torch.Tensor] = []
    targets: list[torch.device] = []

    def plan(tensor: torch.Tensor | None, device: torch.device) -> None:
        if tensor is not None:
            moving.append(tensor)
            targets.append(device)

    for device, index, rows, bits in zip(devices, kept, merges, row_bits, strict=True):
        plan(index, device)
        plan(bits, device)
        for tensor in _merge_tensors(rows):
            plan(tensor, device)
    moved = dict(zip(map(id, moving), to_device(moving, targets), strict=True)) if moving else {}

    def placed(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None else moved.get(id(tensor), tensor)

    merged = [None if rows is None else MergeRows(*map(placed, _merge_tensors(rows))) for rows in merges]
    # A trace holds positions narrowed (`LayerTrace.compact`); gathers index with int64, made on the device.
    return [None if t is None else placed(t).long() for t in kept], merged, [placed(t) for t in row_bits]


def _merge_tensors(rows: MergeRows | None) -> list[torch.Tensor]:
    """The tensors of `rows` in field order (`dataclasses.astuple` would deep-copy them)."""
    return [] if rows is None else [getattr(rows, field.name) for field in dataclasses.fields(rows)]


def stack_caches(caches: list[DynamicCache], config) -> DynamicCache:
    """One cache whose batch row i is `caches[i]` (each `[1, kv_heads, L_layer, d]`; per layer, equal L).

    For scoring several compressed caches with one forward (`kvcrush.decoding.score_reference_batch`).
    """
    stacked = prompt_cache(config)
    for index, target in enumerate(stacked.layers):
        keys = torch.cat([cache.layers[index].keys for cache in caches])
        values = torch.cat([cache.layers[index].values for cache in caches])
        target.lazy_initialization(keys, values)
        target.keys, target.values = keys, values
    if getattr(caches[0], "key_positions", None) is not None:
        stacked.key_positions = KeyPositions.stack([cache.key_positions for cache in caches])
    return stacked
