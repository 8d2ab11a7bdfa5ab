"""`full`: the uncompressed reference; nothing is evicted whatever the budget."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvcrush.attention import LayerInputs
from kvcrush.policies.base import Policy


@dataclass
class FullCache(Policy):
    name = "full"
    help = "No eviction: the reference every other policy is compared with."
    color = "#000000"
    evicts = False
    budget: float | int = 1.0

    def score(self, layer: LayerInputs) -> torch.Tensor:
        return torch.zeros(layer.kv_heads, layer.n_context)

    def query_rows(self, layer: LayerInputs) -> tuple[int, int]:
        return layer.n_context, layer.n_context  # keys only
