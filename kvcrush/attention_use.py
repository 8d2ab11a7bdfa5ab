"""What the answer used: each generated token's attention to the compressed cache, split by why a row is there.

Did the answer ever read the KVCrush representatives it paid for? While an answer decodes, the model runs
with a recording attention implementation: the one it was configured with (sdpa, eager, ...) computes the
layer's output exactly as before, and beside it the one query that predicts the next token (the last row of
the forward, post-RoPE, as the layer itself computed it) takes its softmax over the layer's cached keys
(`[kv_heads, group, rows]`: one query per step, never an `[N, N]` matrix). Its attention is added up by why
each cache row is there: sink, recent window, kept by importance, KVCrush representative, question (and
chat-template tokens), or the answer's own tokens fed back. Everything stays on the model's device (no host
syncs per layer); the result moves to the CPU once, after decoding.

Only when asked: `PreparedPrompt.generate(observer=AttentionRecorder())` switches the implementation for
that decode alone (transformers' `AttentionInterface`, with the original implementation's mask function,
so the model computes the same masks and outputs), so plain runs are untouched. Token i of the answer is
predicted by the forward of the token before it: the last appended question/template token for token 0
(not recorded when nothing is appended: that query ran in the prefill, over the whole prompt), then the
answer's own tokens. A multi-token forward after the first one (a reference scored on a scratch copy of
the cache) is not recorded.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import eager_attention_forward

from kvcrush.attention import attention_modules
from kvcrush.decoding import IMPLEMENTATION_WRAPPERS, visible_rows
from kvcrush.devices import layer_devices
from kvcrush.explain.span_fate import layer_status
from kvcrush.host import to_host
from kvcrush.trace import IMPORTANT, PROTECTED, RECENT, REPRESENTATIVE, SINK, RunTrace

CATEGORIES = ("sink", "recent", "kept (importance)", "KVCrush representative", "question", "answer so far")
SINK_C, RECENT_C, IMPORTANT_C, REPRESENTATIVE_C, QUESTION_C, ANSWER_C = range(len(CATEGORIES))
# Prompt status code -> category (an evicted row is never in the cache).
_FROM_STATUS = {SINK: SINK_C, RECENT: RECENT_C, IMPORTANT: IMPORTANT_C, REPRESENTATIVE: REPRESENTATIVE_C,
                PROTECTED: QUESTION_C}


@dataclass
class AttentionUse:
    """The recorded attention of one answer (CPU tensors).

    tokens: `[S]` int64 index in the answer of the token each row predicts.
    shares: `[S, layers, C]` float32 share of the query's attention per category (`CATEGORIES`), mean over
        query heads (each `[s, l]` row sums to 1).
    cache_shares: `[S, layers, C]` float32 share of the cache's rows per category, mean over KV heads (what
        attention spread evenly would give).
    layer_position: `[layers, n_positions]` float32 attention per true token position, mean over the recorded
        tokens and query heads (positions: budgeted prompt, then appended tokens, then the answer).
    n_budgeted: prompt tokens under the budget; n_appended: question/template tokens appended after them.
    """

    tokens: torch.Tensor
    shares: torch.Tensor
    cache_shares: torch.Tensor
    layer_position: torch.Tensor
    n_budgeted: int
    n_appended: int

    @property
    def n_steps(self) -> int:
        return int(self.tokens.numel())

    def per_layer(self) -> torch.Tensor:
        """`[layers, C]` attention share per category, mean over the recorded tokens."""
        return self.shares.mean(dim=0)

    def per_token(self) -> torch.Tensor:
        """`[S, C]` attention share per category, mean over layers."""
        return self.shares.mean(dim=1)

    def overall(self) -> torch.Tensor:
        """`[C]` mean over tokens and layers."""
        return self.shares.mean(dim=(0, 1))

    def cache_overall(self) -> torch.Tensor:
        """`[C]` share of cache rows per category, mean over tokens and layers."""
        return self.cache_shares.mean(dim=(0, 1))

    def top_prompt_tokens(self, k: int = 20) -> list[tuple[int, float]]:
        """The `k` budgeted prompt positions the answer attended to most (mean over tokens, layers, heads)."""
        prompt = self.layer_position[:, : self.n_budgeted].mean(dim=0)
        values, positions = prompt.topk(min(k, prompt.numel()))
        return [(int(p), float(v)) for p, v in zip(positions.tolist(), values.tolist(), strict=True)]


STATE = "_kvcrush_attention_use"  # attribute of each attention module while a recording runs
RECORDING_PREFIX = "kvcrush_recording_"


def _recording(base: str):
    """The name of a recording attention implementation over `base`, registered on first use."""
    if base.startswith(RECORDING_PREFIX):
        return base
    name = f"{RECORDING_PREFIX}{base}"
    if name not in ALL_ATTENTION_FUNCTIONS:
        original = ALL_ATTENTION_FUNCTIONS.get(base, eager_attention_forward) if base != "eager" \
            else eager_attention_forward

        def attention(module, query, key, value, attention_mask, **kwargs):
            output = original(module, query, key, value, attention_mask, **kwargs)
            state = getattr(module, STATE, None)
            if state is not None:
                visible = visible_rows(module.layer_idx, kwargs.get("position_ids"), query.shape[1] // key.shape[1])
                state.record(module.layer_idx, query, key, kwargs.get("scaling"), kwargs.get("softcap"),
                             None if visible is None else visible[0, :, -1])
            return output

        AttentionInterface.register(name, attention)
        if base in ALL_MASK_ATTENTION_FUNCTIONS:  # the same masks as the original (none for one without)
            AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])
    return name


IMPLEMENTATION_WRAPPERS[RECORDING_PREFIX] = _recording


class AttentionRecorder:
    """Records `AttentionUse` during one `PreparedPrompt.generate(..., observer=recorder)`; read `result` after."""

    def __init__(self) -> None:
        self.result: AttentionUse | None = None

    @contextlib.contextmanager
    def watch(self, prepared, trace: RunTrace, cache, evictor=None):
        """Record while the appended tail and the answer go through `cache` (under the model's lock)."""
        lm = prepared.lm
        config = lm.model.config
        state = _State(lm, trace, prepared.n_budgeted, len(prepared.appended_ids), evictor)
        modules = attention_modules(lm.model)
        previous = config._attn_implementation
        config._attn_implementation = _recording(previous)
        for module in modules:
            setattr(module, STATE, state)
        try:
            yield self
        finally:
            config._attn_implementation = previous
            for module in modules:
                delattr(module, STATE)
        self.result = state.finish(skipped_first=not prepared.appended_ids)


class _State:
    """Per-layer bookkeeping of one recording, each layer's on that layer's device (`layer_devices`).

    Without decode-time eviction a layer's cache only grows, so the category and true position of each
    cache row sit in per-layer buffers laid out like the cache (`[kv_heads, capacity]`) and a step costs the
    query's softmax, one scatter of its weights into categories and one add into the layer's per-row sum.
    With decode-time eviction rows move, so every step maps its rows from the evictor's positions instead.
    Weights are summed over query heads here and divided by their number once, at the end.
    """

    def __init__(self, lm, trace: RunTrace, n_budgeted: int, n_appended: int, evictor) -> None:
        self.lm, self.evictor = lm, evictor
        self.devices = layer_devices(lm.model)  # a sharded model's layers sit on several GPUs
        self.n_budgeted, self.n_appended = n_budgeted, n_appended
        self.n_heads = int(lm.model.config.num_attention_heads)
        self.lookup = [torch.stack([_categories(layer_status(layer, h)) for h in range(layer.kept.shape[0])])
                       .to(device) for layer, device in zip(trace.layers, self.devices, strict=True)]
        held = [(torch.arange(n_budgeted, device=device).expand(layer.kept.shape[0], -1) if layer.no_op
                 else layer.kept.long().to(device)) for layer, device in zip(trace.layers, self.devices, strict=True)]
        self.held = held  # `[kv_heads, T]` prompt positions each layer's cache starts with
        self.next_position = [n_budgeted] * len(trace.layers)
        self.shares: list[list[torch.Tensor]] = [[] for _ in trace.layers]  # per layer, per step: `[kv_heads, C]`
        self.sizes: list[list[int]] = [[] for _ in trace.layers]  # rows in the cache at each step
        self.cache_rows: list[list[torch.Tensor]] = [[] for _ in trace.layers]  # with eviction: `[C]` per step
        self.positions: list[torch.Tensor] = []
        self.categories: list[torch.Tensor] = []
        self.weights: list[torch.Tensor] = []
        self.n_positions = n_budgeted + n_appended + 512  # grown when an answer runs past it
        # Per layer `[n_positions]`: attention summed per true position.
        self.layer_position = [torch.zeros(self.n_positions, device=device) for device in self.devices]
        if evictor is None:
            for index in range(len(trace.layers)):
                self._layout(index, held[index].shape[1] + n_appended + 512)

    def _layout(self, index: int, capacity: int) -> None:
        """(Re)build layer `index`'s row buffers for `capacity` rows: prompt rows, appended, then the answer."""
        held = self.held[index]
        kv_heads, n_held = held.shape
        later = torch.arange(self.n_budgeted, self.n_budgeted + capacity - n_held, device=held.device)
        positions = torch.cat([held, later.expand(kv_heads, -1)], dim=1)
        weights = torch.zeros(kv_heads, capacity, device=held.device)
        if index < len(self.weights):
            old = self.weights[index]
            weights[:, : old.shape[1]] = old
            self.positions[index], self.weights[index] = positions, weights
            self.categories[index] = self._category(index, positions)
        else:
            self.positions.append(positions)
            self.weights.append(weights)
            self.categories.append(self._category(index, positions))

    def _category(self, index: int, positions: torch.Tensor) -> torch.Tensor:
        """`[kv_heads, rows]` category of cache rows from their true positions."""
        prompt = self.lookup[index].gather(1, positions.clamp(max=self.n_budgeted - 1))
        later = torch.where(positions < self.n_budgeted + self.n_appended, QUESTION_C, ANSWER_C)
        return torch.where(positions < self.n_budgeted, prompt, later)

    def record(self, index: int, query: torch.Tensor, key: torch.Tensor, scaling: float | None,
               softcap: float | None = None, visible: torch.Tensor | None = None) -> None:
        """One layer's forward: `query` `[1, heads, q, d]` post-RoPE, `key` `[1, kv_heads, rows, d]` (cache + new).

        softcap: Gemma-2's logit soft-capping. visible: `[heads, rows]` bool, the rows the last query may attend
        to when the forward's mask comes from true positions (sliding-window layers, `kvcrush.sliding`)."""
        count, rows = query.shape[2], key.shape[2]
        if count > 1 and self.sizes[index]:
            return  # a multi-token forward after the tail: a reference scored on a scratch copy
        start = self.next_position[index]
        self.next_position[index] = start + count
        if start + count < self.n_budgeted + self.n_appended:
            return  # a tail token fed alone (ragged caches) that does not predict the answer
        kv_heads, head_dim = key.shape[1], key.shape[-1]
        scale = scaling if scaling is not None else head_dim ** -0.5
        last = query[0, :, -1].float().reshape(kv_heads, -1, head_dim) * scale  # [kv_heads, group, d]
        logits = torch.matmul(last, key[0].float().transpose(1, 2))  # [kv_heads, group, rows]
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        if visible is not None:
            logits = logits.masked_fill(~visible.reshape(kv_heads, -1, rows), float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        weight = probs.sum(dim=1)  # [kv_heads, rows]: the group's attention to each row
        if self.evictor is None:
            if rows > self.weights[index].shape[1]:
                self._layout(index, 2 * rows)
            category = self.categories[index][:, :rows]
            self.weights[index][:, :rows].add_(weight)
        else:
            new = torch.arange(start, start + count, device=key.device).expand(kv_heads, count)
            positions = torch.cat([self.evictor.positions[index], new], dim=1)  # [kv_heads, rows]
            category = self._category(index, positions)
            if start + count > self.n_positions:
                self._grow(2 * (start + count))
            self.layer_position[index].index_add_(0, positions.reshape(-1), weight.reshape(-1))
            self.cache_rows[index].append(torch.zeros(kv_heads, len(CATEGORIES), device=key.device).scatter_add_(
                1, category, torch.ones_like(weight)).sum(dim=0) / category.numel())
        self.shares[index].append(torch.zeros(kv_heads, len(CATEGORIES), device=key.device)
                                  .scatter_add_(1, category, weight))
        self.sizes[index].append(rows)

    def _grow(self, width: int) -> None:
        """Room for `width` positions in the per-position sums (an answer longer than planned)."""
        self.layer_position = [torch.nn.functional.pad(sums, (0, width - self.n_positions))
                               for sums in self.layer_position]
        self.n_positions = width

    def _cache_shares(self, index: int, steps: int) -> torch.Tensor:
        """`[steps, C]` share of the cache's rows per category at each step."""
        if self.evictor is not None:
            return torch.stack(self.cache_rows[index][:steps])
        category = self.categories[index]
        onehot = torch.nn.functional.one_hot(category, len(CATEGORIES)).sum(dim=0).cumsum(dim=0)  # [capacity, C]
        sizes = torch.tensor(self.sizes[index][:steps], device=category.device)
        return onehot[sizes - 1].float() / (sizes[:, None] * category.shape[0])

    def finish(self, skipped_first: bool) -> AttentionUse | None:
        steps = min(len(rows) for rows in self.shares)
        if steps == 0:
            return None
        n_layers, used = len(self.shares), max(self.next_position)
        per_layer_shares = [torch.stack(rows[:steps]).sum(dim=1) for rows in self.shares]  # each `[steps, C]`
        per_layer_cache = [self._cache_shares(index, steps) for index in range(n_layers)]
        if self.evictor is None:
            needed = max(self.n_budgeted + weights.shape[1] for weights in self.weights)  # past any row's position
            if needed > self.n_positions:
                self._grow(needed)
            for index, (positions, weights) in enumerate(zip(self.positions, self.weights, strict=True)):
                self.layer_position[index].index_add_(0, positions.reshape(-1), weights.reshape(-1))
        first = 1 if skipped_first else 0
        # One copy per device; the layers' results meet on the host.
        moved = to_host(per_layer_shares + per_layer_cache + [sums[:used] for sums in self.layer_position])
        shares = torch.stack(moved[:n_layers], dim=1) / self.n_heads
        cache_shares = torch.stack(moved[n_layers : 2 * n_layers], dim=1)
        layer_position = torch.stack(moved[2 * n_layers :]) / (steps * self.n_heads)
        return AttentionUse(tokens=torch.arange(first, first + steps), shares=shares, cache_shares=cache_shares,
                            layer_position=layer_position, n_budgeted=self.n_budgeted, n_appended=self.n_appended)


def _categories(status: torch.Tensor) -> torch.Tensor:
    """`[n]` int64 category of each prompt token from its status code (evicted rows never reach the cache)."""
    out = torch.full(status.shape, IMPORTANT_C, dtype=torch.int64)
    for code, category in _FROM_STATUS.items():
        out[status == code] = category
    return out
