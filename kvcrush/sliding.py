"""Sliding-window layers: which layers have one, which prompt rows they hold, and masks by true positions.

Mistral v0.1, Qwen2 with `use_sliding_window`, Phi-3 and Gemma-2/3's local layers attend only to the
last `W` positions: query `q` sees key `k` iff `k <= q` and `q - k < W` (transformers'
`sliding_window_overlay`). transformers' own cache keeps the last `W - 1` rows of such a layer after
each forward, which is all the next token can reach. The budget means the same there as anywhere
(spec section 1): each KV head keeps at most `T` of the rows the layer holds.

Once a layer is compressed, row `i` of a head is no longer position `i`, and different heads hold
different positions, so the model's own masks (built from row counts) no longer fit. A compressed cache
of a model with sliding layers therefore carries the true position of every row
(`KeyPositions`, `[batch, kv_heads, rows]` per layer), the decoding loop appends the positions of the
tokens it feeds, and attention runs through `kvcrush.decoding`'s positioned SDPA, which builds each
layer's mask from those positions: causal, and inside the window on sliding layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def layer_windows(config) -> list[int | None]:
    """Per decoder layer: its sliding window `W`, or None for full attention.

    The rule transformers' `DynamicCache(config=...)` uses to build sliding layers: `layer_types` where
    the config has them, else every layer slides when `sliding_window` (or `attention_chunk_size`) is set.
    """
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    window = getattr(text, "sliding_window", None) or getattr(text, "attention_chunk_size", None)
    types = getattr(text, "layer_types", None)
    if types is None:
        types = ["sliding_attention" if window is not None else "full_attention"] * int(text.num_hidden_layers)
    return [int(window) if kind in ("sliding_attention", "chunked_attention") and window else None for kind in types]


def has_sliding_layers(config) -> bool:
    return any(window is not None for window in layer_windows(config))


def held_from(n_tokens: int, window: int | None) -> int:
    """First prompt position a layer still holds after prefilling `n_tokens` (0: all of them).

    A sliding layer keeps the last `W - 1` rows, as transformers' `DynamicSlidingWindowLayer` does: the
    next token attends to those and to itself.
    """
    if window is None:
        return 0
    return max(0, n_tokens - (window - 1))


@dataclass
class KeyPositions:
    """True positions of every cached row of a compressed cache, and each layer's window.

    per_layer: `[batch, kv_heads, rows]` int64 per layer, on that layer's device, aligned with the rows
    of `cache.layers[i]`. windows: `layer_windows(config)`.
    """

    per_layer: list[torch.Tensor]
    windows: list[int | None]

    def append(self, start: int, count: int) -> None:
        """`count` tokens at true positions `start...` are being added to every layer."""
        for index, held in enumerate(self.per_layer):
            new = torch.arange(start, start + count, device=held.device)
            self.per_layer[index] = torch.cat([held, new.expand(*held.shape[:2], count)], dim=-1)

    def gather(self, layer: int, kept: torch.Tensor) -> None:
        """Layer `layer` now holds rows `kept` (`[kv_heads, T]` row indices) of what it held."""
        held = self.per_layer[layer]
        self.per_layer[layer] = held.gather(-1, kept.to(held.device)[None].expand(held.shape[0], -1, -1))

    def mask(self, layer: int, query_positions: torch.Tensor, group: int) -> torch.Tensor:
        """`[batch, query_heads, q, rows]` bool: which cached rows each new query may attend to.

        query_positions: `[batch, q]` true positions of the queries (the last `q` rows are theirs).
        """
        keys = self.per_layer[layer][:, :, None, :]  # [batch, kv_heads, 1, rows]
        queries = query_positions.to(keys.device)[:, None, :, None]  # [batch, 1, q, 1]
        visible = keys <= queries
        window = self.windows[layer]
        if window is not None:
            visible &= queries - keys < window
        return visible.repeat_interleave(group, dim=1) if group > 1 else visible

    @staticmethod
    def stack(items: list[KeyPositions]) -> KeyPositions:
        """One `KeyPositions` whose batch row i is `items[i]` (as `kvcrush.kvcache.stack_caches`)."""
        layers = [torch.cat([item.per_layer[i] for item in items]) for i in range(len(items[0].per_layer))]
        return KeyPositions(layers, items[0].windows)


__all__ = ["KeyPositions", "has_sliding_layers", "held_from", "layer_windows"]
