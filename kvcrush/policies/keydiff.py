"""`keydiff`: keep the keys that differ most from the layer's average key direction.

Park et al., "KeyDiff: Key Similarity-Based KV Cache Eviction for Long-Context LLM Inference in
Resource-Constrained Environments" (2025). Geometrically distinctive keys tend to receive high
attention, so the cache is kept diverse: per KV head, the anchor is the mean of the normalised keys,
`mu = mean_i(k_i / ||k_i||)`, and each token scores `-cos(k_i, mu)`; the least similar keys stay.
No query or attention weight is read, so it runs alongside any attention kernel.

The paper evicts block by block while a long prompt streams in; this policy scores the whole prompt
once after the prefill (as kvpress's KeyDiffPress does), and with `decode_interval` it re-scores the
cache's keys during decoding, where the anchor follows what the cache currently holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kvcrush.attention import LayerInputs
from kvcrush.policies.base import Policy


@dataclass
class KeyDiff(Policy):
    name = "keydiff"
    kvpress_press = "keydiff"
    help = "Keeps tokens whose keys point furthest from the layer's mean key direction (key diversity)."
    color = "#7B3294"  # purple: the Okabe-Ito colours are all taken by the other policies

    def score(self, layer: LayerInputs) -> torch.Tensor:
        """`[kv_heads, n_context]` = -cos(k_i, mean of the normalised keys), in float32."""
        keys = layer.keys[0, :, : layer.n_context].float()  # [kv_heads, n, head_dim]
        anchor = F.normalize(keys, p=2, dim=-1).mean(dim=1, keepdim=True)  # [kv_heads, 1, head_dim]
        return -F.cosine_similarity(keys, anchor, dim=-1)

    def query_rows(self, layer: LayerInputs) -> tuple[int, int]:
        return layer.n_context, layer.n_context  # keys only
