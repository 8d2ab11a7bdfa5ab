"""The real KV cache: its size in bytes and building a compressed copy from kept rows.

One place counts KV bytes (the engine, the benchmark's kvpress runs and the app all read it), always
from the tensors themselves: `numel * element_size` of every layer's keys and values.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache


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
    """Bytes of every layer's keys and values (at `n_tokens` rows per layer when given)."""
    return sum(layer_bytes(layer.keys, layer.values, n_tokens) for layer in cache.layers
               if isinstance(getattr(layer, "keys", None), torch.Tensor) and layer.keys.dim() == 4)


def cache_lengths(cache: DynamicCache) -> list[int]:
    """Tokens held per layer (the sequence axis of each layer's keys)."""
    return [int(layer.keys.shape[-2]) for layer in cache.layers]


def gather_rows(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tensor `[1, kv_heads, L, d]`, index `[kv_heads, T]` -> `[1, kv_heads, T, d]` (a new tensor)."""
    expanded = index[None, :, :, None].expand(1, -1, -1, tensor.shape[-1])
    return torch.gather(tensor, 2, expanded)


def compressed_copy(full: DynamicCache, kept: list[torch.Tensor | None], config) -> DynamicCache:
    """A new cache whose layer i holds the rows `kept[i]` (`[kv_heads, T]`, or None: every row) of `full`.

    `full` is left untouched, so the next selection can gather from it again. A layer that keeps
    every row shares the full cache's tensors: decoding appends with `torch.cat`, which makes new
    tensors and never writes into the shared ones.
    """
    cache = DynamicCache(config=config)
    for source, target, index in zip(full.layers, cache.layers, kept, strict=True):
        target.lazy_initialization(source.keys, source.values)
        if index is None:
            target.keys, target.values = source.keys, source.values
        else:
            index = index.to(source.keys.device)
            target.keys = gather_rows(source.keys, index)
            target.values = gather_rows(source.values, index)
    return cache
