"""`tova`: attention from the last prompt query only.

Oren et al., "Transformers are Multi-State RNNs" (TOVA, 2024). The last query's attention decides
what stays. `head_reduction="group"` (default, as the spec says) averages query heads inside each GQA
group; `"all"` averages every head of the layer so all KV heads keep the same tokens, as the paper
and kvpress's TOVAPress do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvcrush.attention import LayerInputs, window_attention
from kvcrush.errors import PolicyError
from kvcrush.policies.base import Policy


@dataclass
class TOVA(Policy):
    name = "tova"
    recent: int | None = None  # None: the last token itself (the question, query-aware)
    head_reduction: str = "group"

    def __post_init__(self) -> None:
        if self.head_reduction not in ("group", "all"):
            raise PolicyError(f"head_reduction must be 'group' or 'all', got {self.head_reduction!r}.")
        super().__post_init__()

    def recent_tokens(self, layer: LayerInputs) -> int:
        if self.recent is not None:
            return self.recent
        return max(1, layer.protected_tail)

    def score(self, layer: LayerInputs) -> torch.Tensor:
        """`[query_heads, n_context]` attention of the last query."""
        last = layer.n_context - 1
        return window_attention(layer, last, last + 1)[:, : layer.n_context]

    def kv_scores(self, scores: torch.Tensor, layer: LayerInputs) -> torch.Tensor:
        if self.head_reduction == "all":
            return scores.mean(dim=0, keepdim=True).expand(layer.kv_heads, -1).clone()
        return super().kv_scores(scores, layer)
