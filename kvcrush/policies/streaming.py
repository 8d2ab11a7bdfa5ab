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
from kvcrush.policies.options import option


@dataclass
class StreamingLLM(Policy):
    name = "streaming"
    kvpress_press = "streaming"
    help = "StreamingLLM: attention sinks plus the most recent tokens."
    color = "#E69F00"

    sink: int = option(4, "First tokens always kept (attention sinks).", minimum=0, maximum=4096)

    def score(self, layer: LayerInputs) -> torch.Tensor:
        """`[kv_heads, n_context]`: the position itself, so later tokens rank higher."""
        positions = torch.arange(layer.n_context, dtype=torch.float32, device=layer.keys.device)
        return positions.expand(layer.kv_heads, -1).clone()

    def query_rows(self, layer: LayerInputs) -> tuple[int, int]:
        return layer.n_context, layer.n_context  # keys only
