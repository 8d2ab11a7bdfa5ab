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
from kvcrush.policies.base import HEAD_REDUCTIONS, Policy
from kvcrush.policies.options import option


@dataclass
class TOVA(Policy):
    name = "tova"
    kvpress_press = "tova"
    help = "Attention from the last prompt query only."
    color = "#CC79A7"

    recent: int | None = option(None, "Last context tokens always kept (default: the last token; query-aware: "
                                "the question).", kind=int, minimum=0, maximum=65536)
    head_reduction: str = option("group", "group: each KV head ranks by its own query group; all: every KV "
                                 "head keeps the same tokens (as kvpress's TOVAPress).", choices=HEAD_REDUCTIONS)

    def scoring_rows(self, n_tokens: int) -> int:
        return 1

    def query_rows(self, layer: LayerInputs) -> tuple[int, int]:
        return layer.n_context - 1, layer.n_context

    def recent_tokens(self, layer: LayerInputs) -> int:
        if self.recent is not None:
            return self.recent
        return max(1, layer.protected_tail)

    def score(self, layer: LayerInputs) -> torch.Tensor:
        """`[query_heads, n_context]` attention of the last query."""
        last = layer.n_context - 1
        return window_attention(layer, last, last + 1)[:, : layer.n_context]
