"""`knorm`: keep keys with a small L2 norm.

Devoto et al., "A Simple and Effective L2 Norm-Based Strategy for KV Cache Compression" (2024):
low key norms go with high attention, so the score is minus the norm.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvcrush.attention import LayerInputs
from kvcrush.policies.base import Policy


@dataclass
class KeyNorm(Policy):
    name = "knorm"
    kvpress_press = "knorm"
    help = "Keeps tokens whose keys have the smallest L2 norm."
    color = "#B8A800"  # Okabe-Ito yellow, darkened to be readable on white

    def score(self, layer: LayerInputs) -> torch.Tensor:
        """`[kv_heads, n_context]` = -||k||, computed in float32 so low-precision caches do not tie."""
        keys = layer.keys[0, :, : layer.n_context].float()
        return -torch.linalg.vector_norm(keys, dim=-1)

    def query_rows(self, layer: LayerInputs) -> tuple[int, int]:
        return layer.n_context, layer.n_context  # keys only
