"""`random`: uniform random scores, a floor that any informed policy should beat."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvcrush.attention import LayerInputs
from kvcrush.policies.base import Policy


@dataclass
class RandomEviction(Policy):
    name = "random"

    def score(self, layer: LayerInputs) -> torch.Tensor:
        """`[kv_heads, n_context]` uniform in [0, 1), seeded per layer so runs repeat exactly."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + layer.layer_idx)
        return torch.rand(layer.kv_heads, layer.n_context, generator=generator)
