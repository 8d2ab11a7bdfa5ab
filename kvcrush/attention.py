"""Attention weights recomputed from a layer's query and key states, without full attention matrices.

The model prefills with SDPA (no attention weights materialised). Policies that need attention
re-project the queries they care about from the layer's input hidden states and read the post-RoPE
keys from the cache, so a 4k-token prompt never holds a `[heads, N, N]` matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.models.llama.modeling_llama import repeat_kv, rotate_half


def attention_modules(model) -> list[nn.Module]:
    """The attention module of every decoder layer of a Llama-like causal LM, in layer order."""
    return [layer.self_attn for layer in model.model.layers]


@dataclass
class LayerInputs:
    """Everything a policy may read about one attention layer right after prefill.

    hidden_states: `[1, L, hidden]` the attention layer's input for all L prefilled tokens.
    keys, values: `[1, kv_heads, L, head_dim]` post-RoPE cache entries of this layer.
    cos, sin: `[1, L, head_dim]` rotary embeddings of the L positions.
    n_context: the first `n_context` tokens are under the budget (all L of them after prefill).
    window_start: first token of the question in query-aware mode (the observation window, always
        kept as part of the budget); equal to `n_context` when there is no such window.
    query_aware: whether `[window_start, n_context)` is the question.
    hidden_offset: `hidden_states` holds rows `[hidden_offset, L)` only (a prepared prompt too long to
        keep every row keeps the last ones); queries before it cannot be recomputed.
    """

    module: nn.Module
    layer_idx: int
    n_layers: int
    hidden_states: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    n_context: int
    window_start: int
    query_aware: bool
    hidden_offset: int = 0

    @property
    def kv_heads(self) -> int:
        return self.keys.shape[1]

    @property
    def query_heads(self) -> int:
        return self.module.config.num_attention_heads

    @property
    def group_size(self) -> int:
        return self.query_heads // self.kv_heads

    @property
    def n_total(self) -> int:
        return self.keys.shape[2]

    @property
    def protected_tail(self) -> int:
        """Question tokens at the end that every policy keeps in query-aware mode."""
        return self.n_context - self.window_start if self.query_aware else 0


def query_states(layer: LayerInputs, start: int, end: int) -> torch.Tensor:
    """Post-RoPE queries of tokens `[start, end)`: `[query_heads, end - start, head_dim]`.

    Mirrors the Llama/Qwen2/Mistral attention forward: `q_proj`, optional per-head `q_norm`
    (Qwen3), then rotary embedding (Su et al., RoFormer, 2021).
    """
    module = layer.module
    head_dim = layer.keys.shape[-1]
    offset = layer.hidden_offset
    if start < offset:
        raise ValueError(f"queries from {start} need hidden states that were not kept (kept from {offset})")
    hidden = layer.hidden_states[:, start - offset : end - offset]
    queries = module.q_proj(hidden).view(1, end - start, -1, head_dim)
    if hasattr(module, "q_norm"):
        queries = module.q_norm(queries)
    queries = queries.transpose(1, 2)[0].float()
    cos = layer.cos[0, start:end].float()
    sin = layer.sin[0, start:end].float()
    return queries * cos + rotate_half(queries) * sin


def _scaling(layer: LayerInputs) -> float:
    return float(getattr(layer.module, "scaling", layer.keys.shape[-1] ** -0.5))


def _expanded_keys(layer: LayerInputs) -> torch.Tensor:
    """`[query_heads, L, head_dim]` keys, each KV head repeated for its query group."""
    return repeat_kv(layer.keys, layer.group_size)[0].float()


def attention_probs(layer: LayerInputs, start: int, end: int, keys: torch.Tensor | None = None) -> torch.Tensor:
    """Causal softmax attention of queries `[start, end)` over all keys: `[query_heads, end - start, L]`."""
    keys = _expanded_keys(layer) if keys is None else keys
    queries = query_states(layer, start, end)
    logits = torch.matmul(queries, keys.transpose(1, 2)) * _scaling(layer)
    query_pos = torch.arange(start, end, device=logits.device)[:, None]
    key_pos = torch.arange(keys.shape[1], device=logits.device)[None, :]
    logits = logits.masked_fill(key_pos > query_pos, float("-inf"))
    return torch.softmax(logits, dim=-1)


def window_attention(layer: LayerInputs, start: int, end: int) -> torch.Tensor:
    """Mean attention that queries `[start, end)` pay each key: `[query_heads, L]`.

    SnapKV's observation window (Li et al., "SnapKV: LLM Knows What You are Looking for Before
    Generation", 2024) and TOVA's last query (Oren et al., 2024) are both this with different windows.
    """
    return attention_probs(layer, start, end).mean(dim=1)


def accumulated_attention(layer: LayerInputs, chunk_size: int = 256) -> torch.Tensor:
    """Attention each key receives, summed over all L prompt queries (causal): `[query_heads, L]`.

    H2O's heavy-hitter statistic (Zhang et al., "H2O: Heavy-Hitter Oracle", 2023). Queries are
    processed `chunk_size` at a time so memory is `[heads, chunk, L]`, never `[heads, L, L]`.
    """
    keys = _expanded_keys(layer)
    total = torch.zeros(keys.shape[0], keys.shape[1], dtype=torch.float32, device=keys.device)
    for start in range(0, layer.n_total, chunk_size):
        end = min(start + chunk_size, layer.n_total)
        # Causal: queries before `end` see no key at or after it, so those columns are skipped (about
        # half of the work over the whole prompt).
        total[:, :end] += attention_probs(layer, start, end, keys[:, :end]).sum(dim=1)
    return total
