"""Attention weights recomputed from a layer's query and key states, without full attention matrices.

The model prefills with SDPA (no attention weights materialised). Policies that need attention
re-project the queries they care about from the layer's input hidden states and read the post-RoPE
keys from the cache, so a 4k-token prompt never holds a `[heads, N, N]` matrix.

Each family's attention is reproduced as its transformers module computes it: a separate `q_proj` or
Phi-3's fused `qkv_proj`; Qwen3's and Gemma-3's per-head `q_norm`; the family's own
`apply_rotary_pos_emb` (Phi-3's partial rotary included); the module's `scaling` (Gemma's
`query_pre_attn_scalar ** -0.5`); Gemma-2's logit soft-capping `cap * tanh(logits / cap)`; and on
sliding-window layers the window (`kvcrush.sliding`).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from transformers.models.llama.modeling_llama import repeat_kv

from kvcrush.sliding import held_from


def attention_modules(model) -> list[nn.Module]:
    """The attention module of every decoder layer of a Llama-like causal LM, in layer order."""
    return [layer.self_attn for layer in model.model.layers]


@contextmanager
def forward_hooks(modules: list[nn.Module], hook) -> Iterator[None]:
    """`hook(module, args, kwargs, output)` on every module's forward (with its keyword arguments) for the block."""
    handles = [module.register_forward_hook(hook, with_kwargs=True) for module in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


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
    sliding_window: the layer's window `W` (query q sees keys k with q - k < W), None for full attention.
    held_offset: 0, or in the view selection sees of a sliding layer (`held`), the prompt position of row 0.
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
    sliding_window: int | None = None
    held_offset: int = 0

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
    def n_prompt(self) -> int:
        """Tokens under the budget in the whole prompt (a fractional budget is a share of these)."""
        return self.n_context + self.held_offset

    @property
    def held_from(self) -> int:
        """First prompt position this layer holds (0, or a sliding layer's; `kvcrush.sliding.held_from`)."""
        return self.held_offset + held_from(self.n_context, self.sliding_window)

    def held(self) -> LayerInputs:
        """This layer as a selection sees it: only the rows it holds, re-indexed from 0 (`held_offset` says where
        they start). A full-attention layer, or a sliding one that still holds the whole prompt, is itself."""
        first = held_from(self.n_context, self.sliding_window)
        if first == 0:
            return self
        return dataclasses.replace(
            self, hidden_states=self.hidden_states[:, max(0, first - self.hidden_offset):],
            keys=self.keys[:, :, first:], values=self.values[:, :, first:], cos=self.cos[:, first:],
            sin=self.sin[:, first:], n_context=self.n_context - first, window_start=max(0, self.window_start - first),
            hidden_offset=max(0, self.hidden_offset - first), held_offset=self.held_offset + first)

    @property
    def protected_tail(self) -> int:
        """Question tokens at the end that every policy keeps in query-aware mode."""
        return self.n_context - self.window_start if self.query_aware else 0


def _project_queries(module: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """`[1, rows, query_heads * head_dim]` query projection: `q_proj`, or the query part of Phi-3's `qkv_proj`."""
    if hasattr(module, "q_proj"):
        return module.q_proj(hidden)
    width = module.config.num_attention_heads * module.head_dim
    return module.qkv_proj(hidden)[..., :width]


def _rotary(module: nn.Module):
    """The family's own `apply_rotary_pos_emb` (from the module's modeling file), so partial rotary matches."""
    return sys.modules[type(module).__module__].apply_rotary_pos_emb


def query_states(layer: LayerInputs, start: int, end: int) -> torch.Tensor:
    """Post-RoPE queries of tokens `[start, end)`: `[query_heads, end - start, head_dim]` float32.

    Mirrors the family's attention forward: query projection, optional per-head `q_norm` (Qwen3,
    Gemma-3), then the rotary embedding (Su et al., RoFormer, 2021) with the layer's own cos/sin.
    """
    module = layer.module
    head_dim = layer.keys.shape[-1]
    offset = layer.hidden_offset
    if start < offset:
        raise ValueError(f"queries from {start} need hidden states that were not kept (kept from {offset})")
    hidden = layer.hidden_states[:, start - offset : end - offset]
    queries = _project_queries(module, hidden).view(1, end - start, -1, head_dim)
    if hasattr(module, "q_norm"):
        queries = module.q_norm(queries)
    queries = queries.transpose(1, 2).float()
    cos = layer.cos[:, start:end].float()
    sin = layer.sin[:, start:end].float()
    rotated, _ = _rotary(module)(queries, queries[:, :0], cos, sin)
    return rotated[0]


def _scaling(layer: LayerInputs) -> float:
    return float(getattr(layer.module, "scaling", layer.keys.shape[-1] ** -0.5))


def _softcap(layer: LayerInputs) -> float | None:
    """Gemma-2's attention logit soft-capping (None where the family has none)."""
    cap = getattr(layer.module, "attn_logit_softcapping", None)
    return float(cap) if cap else None


def _expanded_keys(layer: LayerInputs) -> torch.Tensor:
    """`[query_heads, L, head_dim]` keys, each KV head repeated for its query group."""
    return repeat_kv(layer.keys, layer.group_size)[0].float()


def attention_probs(layer: LayerInputs, start: int, end: int, keys: torch.Tensor | None = None) -> torch.Tensor:
    """Causal softmax attention of queries `[start, end)` over all keys: `[query_heads, end - start, L]`."""
    keys = _expanded_keys(layer) if keys is None else keys
    queries = query_states(layer, start, end)
    logits = torch.matmul(queries, keys.transpose(1, 2)) * _scaling(layer)
    cap = _softcap(layer)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    query_pos = torch.arange(start, end, device=logits.device)[:, None]
    key_pos = torch.arange(keys.shape[1], device=logits.device)[None, :]
    hidden = key_pos > query_pos
    if layer.sliding_window is not None:
        hidden |= query_pos - key_pos >= layer.sliding_window
    logits = logits.masked_fill(hidden, float("-inf"))
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
