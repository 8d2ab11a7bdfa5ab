"""`streaming`: StreamingLLM keeps the attention-sink tokens and the most recent ones.

Xiao et al., "Efficient Streaming Language Models with Attention Sinks" (2023). Scoring tokens by
their position makes "keep the top T - S" equal to "keep the last T - S", so the common selection
code (and KVCrush on top of it) applies unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvcrush.attention import LayerInputs
from kvcrush.policies.base import Policy


@dataclass
class StreamingLLM(Policy):
    name = "streaming"
    sink: int = 4

    def score(self, layer: LayerInputs) -> torch.Tensor:
        """`[kv_heads, n_context]`: the position itself, so later tokens rank higher."""
        positions = torch.arange(layer.n_context, dtype=torch.float32)
        return positions.expand(layer.kv_heads, -1).clone()
