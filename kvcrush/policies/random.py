"""`random`: uniform random scores, a floor that any informed policy should beat."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvcrush.attention import LayerInputs
from kvcrush.policies.base import Policy
from kvcrush.policies.options import option


@dataclass
class RandomEviction(Policy):
    name = "random"
    help = "Keeps a seeded random subset of the middle tokens: the floor any informed policy should beat."
    color = "#999999"

    seed: int = option(0, "Seed of the random scores.", minimum=0, maximum=2**31 - 1, scorer=True)

    def score(self, layer: LayerInputs) -> torch.Tensor:
        """`[kv_heads, n_context]` uniform in [0, 1), seeded per layer so runs repeat exactly."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + layer.layer_idx)
        # Drawn on the CPU so every device keeps the same tokens; the copy need not wait for the GPU's queue.
        scores = torch.rand(layer.kv_heads, layer.n_context, generator=generator, device="cpu")
        return scores.to(layer.keys.device, non_blocking=True)

    def query_rows(self, layer: LayerInputs) -> tuple[int, int]:
        return layer.n_context, layer.n_context  # keys only
