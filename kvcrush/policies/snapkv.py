"""`snapkv`: attention from an observation window of the last prompt queries, pooled.

Li et al., "SnapKV: LLM Knows What You are Looking for Before Generation" (2024). Each query head's
attention from the window is averaged over the window's queries, smoothed with a 1-D pool
(kernel 5, same padding) so neighbours of important tokens survive, then averaged per GQA group.

Window: query-agnostic (default), the last `window` context tokens; query-aware, exactly the
question's tokens (whatever their count). Either way the window is kept, inside the budget.
Pooling is `max` by default as the spec says; `avg` (zero-padded) reproduces kvpress's SnapKVPress.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kvcrush.attention import LayerInputs, window_attention
from kvcrush.errors import PolicyError
from kvcrush.policies.base import HEAD_REDUCTIONS, Policy
from kvcrush.policies.options import option


@dataclass
class SnapKV(Policy):
    name = "snapkv"
    kvpress_press = "snapkv"
    help = "Attention from the last prompt tokens (observation window), max-pooled."
    color = "#0072B2"

    recent: int | None = option(None, "Last context tokens always kept (default: the observation window; "
                                "query-aware: the question).", kind=int, minimum=0, maximum=65536)
    window: int = option(32, "Observation window: the last prompt tokens whose attention scores the rest "
                         "(query-aware: the question instead).", minimum=1, maximum=4096, scorer=True)
    kernel: int = option(5, "Pooling kernel (odd): neighbours of important tokens survive.", minimum=1,
                         maximum=63, step=2, scorer=True)
    pooling: str = option("max", "max (the spec) or avg (kvpress's SnapKVPress).", choices=("max", "avg"),
                          scorer=True)
    head_reduction: str = option("group", "group: each KV head ranks by its own query group; all: every KV "
                                 "head keeps the same tokens (the mean over all query heads).", choices=HEAD_REDUCTIONS)

    def __post_init__(self) -> None:
        if self.window < 1:
            raise PolicyError(f"window must be at least 1 token, got {self.window}.")
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise PolicyError(f"kernel must be a positive odd number, got {self.kernel}.")
        if self.pooling not in ("max", "avg"):
            raise PolicyError(f"pooling must be 'max' or 'avg', got {self.pooling!r}.")
        super().__post_init__()

    def scoring_rows(self, n_tokens: int) -> int:
        return min(n_tokens, int(self.window))

    def query_rows(self, layer: LayerInputs) -> tuple[int, int]:
        return self.observation_window(layer)

    def observation_window(self, layer: LayerInputs) -> tuple[int, int]:
        """`[start, end)` of the queries whose attention scores the context."""
        if layer.protected_tail:
            return layer.window_start, layer.n_context
        return max(0, layer.n_context - self.window), layer.n_context

    def recent_tokens(self, layer: LayerInputs) -> int:
        if self.recent is not None:
            return self.recent
        start, end = self.observation_window(layer)
        return end - start

    def pool(self, scores: torch.Tensor) -> torch.Tensor:
        """Smooth `[heads, n]` scores along tokens with same padding."""
        if self.kernel == 1 or scores.shape[-1] == 0:
            return scores
        padding = self.kernel // 2
        if self.pooling == "max":
            return F.max_pool1d(scores[None], self.kernel, stride=1, padding=padding)[0]
        return F.avg_pool1d(scores[None], self.kernel, stride=1, padding=padding)[0]

    def score(self, layer: LayerInputs) -> torch.Tensor:
        """`[query_heads, n_context]`: pooled window attention; window tokens in the context rank first."""
        start, end = self.observation_window(layer)
        attention = window_attention(layer, start, end)[:, : layer.n_context]
        prefix = min(start, layer.n_context)
        pooled = self.pool(attention[:, :prefix])
        # On the layer's device either way: a prompt no longer than the window has no prefix to take a max of.
        top = pooled.max() + 1 if pooled.numel() else attention.new_ones(())
        return torch.cat([pooled, top.expand(attention.shape[0], layer.n_context - prefix)], dim=1)

