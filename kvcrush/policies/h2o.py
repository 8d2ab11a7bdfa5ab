"""`h2o`: heavy hitters, the tokens that receive the most attention over the whole prompt.

Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language
Models" (2023). The score of token t is the attention it receives from every prompt query (causal),
accumulated in query chunks; a small recent window is kept as in the paper's "local" tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvcrush.attention import LayerInputs, accumulated_attention
from kvcrush.policies.base import HEAD_REDUCTIONS, Policy
from kvcrush.policies.options import option


@dataclass
class H2O(Policy):
    name = "h2o"
    kvpress_press = "observed_attention"
    help = "Heavy hitters: attention each token receives from all prompt queries."
    color = "#009E73"
    chunked_scoring = True
    decode_eviction = False  # heavy hitters accumulate over every query, which decoding does not keep

    recent: int = option(32, "Last context tokens always kept (H2O's local window).", minimum=0, maximum=65536)
    chunk_size: int = option(256, "Prompt queries scored at once (memory: [heads, chunk, N]).", minimum=1,
                             maximum=8192, scorer=True)
    head_reduction: str = option("group", "group: each KV head ranks by its own query group; all: every KV "
                                 "head keeps the same tokens (the mean over all query heads).", choices=HEAD_REDUCTIONS)

    def scoring_rows(self, n_tokens: int) -> int:
        return min(n_tokens, int(self.chunk_size))

    def score(self, layer: LayerInputs) -> torch.Tensor:
        """`[query_heads, n_context]` summed attention; the group mean used for KV heads ranks like the sum."""
        return accumulated_attention(layer, self.chunk_size)[:, : layer.n_context]
