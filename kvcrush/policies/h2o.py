"""`h2o`: heavy hitters, the tokens that receive the most attention over the whole prompt.

Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language
Models" (2023). The score of token t is the attention it receives from every prompt query (causal),
accumulated in query chunks; a small recent window is kept as in the paper's "local" tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvcrush.attention import LayerInputs, accumulated_attention
from kvcrush.policies.base import Policy


@dataclass
class HeavyHitters(Policy):
    name = "h2o"
    recent: int = 32
    chunk_size: int = 256

    def score(self, layer: LayerInputs) -> torch.Tensor:
        """`[query_heads, n_context]` summed attention; the group mean used for KV heads ranks like the sum."""
        return accumulated_attention(layer, self.chunk_size)[:, : layer.n_context]
