"""Decode-time eviction: keep the cache at the budget while an answer is generated.

Compressing once after the prompt leaves a long answer free to grow the cache without bound. With a
policy's `decode_interval = k > 0`, whenever a layer's cache holds `T + k` tokens per head (`T`: what
the layer kept of the prompt), the policy evicts it back to `T`, as kvpress's `DecodingPress` does:
the scores come from the most recent tokens' queries (recomputed from their attention inputs, which
a forward hook keeps for the last few tokens) over every cached key, and KVCrush groups the candidates
exactly as at prefill. So the cache never holds more than `T + k` tokens per head once enough recent
tokens are buffered for the policy's observation window (SnapKV's window: while fewer are buffered,
the eviction waits, so with `k` smaller than the window the first interval may run `window - k` over).

KVCrush's options beyond the paper (spec section 7): `merge="values"` merges at every eviction, as at
the prompt's compression; `split="adaptive"` needs every layer's scores at once, so these one-layer
evictions use the fixed split.

Everything in the cache is evictable then (kept prompt tokens, the appended question, generated
tokens) except what the policy itself protects (sink, recent window). Each eviction is recorded with
the true positions each head keeps, so the explorer can show the cache after every generated token.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch

from kvcrush.attention import LayerInputs, attention_modules
from kvcrush.kvcache import gather_rows, merge_values, set_layer_rows
from kvcrush.policies import Policy
from kvcrush.trace import LayerTrace

MIN_BUFFER = 32  # recent tokens whose attention inputs are kept for scoring (more if the policy's window is)


@dataclass
class DecodeEviction:
    """One layer's eviction after `step` generated tokens.

    positions: `[kv_heads, T]` true token positions each head keeps afterwards (prompt positions below
    `n_prompt`, generated or appended ones above). before: tokens per head just before. trace: the
    policy's decisions over the cache slots it saw (slot indices, not positions).
    """

    step: int
    layer: int
    before: int
    positions: torch.Tensor
    trace: LayerTrace
    seconds: float


@dataclass
class _Recent:
    """A layer's attention inputs of its most recent cache slots: `[1, r, hidden]`, `[1, r, head_dim]` x2."""

    hidden: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor

    def last(self, rows: int) -> _Recent | None:
        """Only the last `rows` rows (None when that is none)."""
        if rows <= 0:
            return None
        return _Recent(self.hidden[:, -rows:], self.cos[:, -rows:], self.sin[:, -rows:])


class DecodeEvictor:
    """Keeps every layer of `cache` at its budget during decoding (see the module docstring).

    budgets: `T` per layer. positions: per layer `[kv_heads, slots]` true positions of the cache's slots.
    """

    def __init__(self, lm, policy: Policy, cache, budgets: list[int], positions: list[torch.Tensor]) -> None:
        self.lm = lm
        self.policy = policy
        self.cache = cache
        self.budgets = budgets
        self.positions = [p.to(lm.device) for p in positions]
        self.interval = int(policy.decode_interval)
        self.buffer_rows = max(MIN_BUFFER, policy.scoring_rows(1 << 30))
        self.recent: list[_Recent | None] = [None] * lm.n_layers
        self.evictions: list[DecodeEviction] = []
        self.seconds = 0.0
        self.peak_tokens = max(p.shape[1] for p in self.positions)
        self.modules = attention_modules(lm.model)

    @contextlib.contextmanager
    def capturing(self):
        """Keep each attention layer's inputs of the tokens forwarded meanwhile (question, answer)."""

        def hook(module, args, kwargs, output):
            cos, sin = kwargs["position_embeddings"]
            self._remember(module.layer_idx, kwargs["hidden_states"], cos, sin)
            return output

        handles = [module.register_forward_hook(hook, with_kwargs=True) for module in self.modules]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _remember(self, layer: int, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
        kept = self.recent[layer]
        if kept is not None:
            hidden, cos, sin = (torch.cat([a, b], dim=1) for a, b in
                                ((kept.hidden, hidden), (kept.cos, cos), (kept.sin, sin)))
        self.recent[layer] = _Recent(hidden, cos, sin).last(self.buffer_rows)

    def append_positions(self, start: int, count: int) -> None:
        """`count` tokens at true positions `start...` were appended to every layer."""
        for i, held in enumerate(self.positions):
            new = torch.arange(start, start + count, device=held.device).expand(held.shape[0], count)
            self.positions[i] = torch.cat([held, new], dim=1)
        self.peak_tokens = max(self.peak_tokens, max(p.shape[1] for p in self.positions))

    def after_forward(self, step: int, position: int) -> None:
        """The token at true `position` (the `step`-th generated) is in the cache: evict where due."""
        self.append_positions(position, 1)
        for layer_idx, layer_cache in enumerate(self.cache.layers):
            n_slots = layer_cache.get_seq_length()  # a quantized layer's keys would be dequantized to count them
            if n_slots >= self.budgets[layer_idx] + self.interval:
                self._evict(step, layer_idx, layer_cache, n_slots)

    def _layer_inputs(self, layer_idx: int, layer_cache, n_slots: int) -> LayerInputs | None:
        recent = self.recent[layer_idx]
        keys, values = layer_cache.keys, layer_cache.values  # read once: a quantized layer dequantizes
        if recent is None:  # nothing aligned is buffered: only scorers that read keys alone can run
            hidden_size = self.lm.model.config.hidden_size
            empty = keys.new_zeros((1, 0, keys.shape[-1]))
            recent = _Recent(keys.new_zeros((1, 0, hidden_size)), empty, empty)
        rows = recent.hidden.shape[1]
        offset = n_slots - rows
        shape = (1, n_slots, recent.cos.shape[-1])
        cos = recent.cos.new_zeros(shape)  # rows before `offset` are never read (no queries there)
        sin = recent.sin.new_zeros(shape)
        cos[:, offset:], sin[:, offset:] = recent.cos, recent.sin
        layer = LayerInputs(self.modules[layer_idx], layer_idx, self.lm.n_layers, recent.hidden, keys,
                            values, cos, sin, n_slots, n_slots, False, offset)
        return layer if self.policy.query_rows(layer)[0] >= offset else None

    def _evict(self, step: int, layer_idx: int, layer_cache, n_slots: int) -> None:
        layer = self._layer_inputs(layer_idx, layer_cache, n_slots)
        if layer is None:
            return  # fewer recent tokens buffered than the policy's window: wait for more
        start = time.perf_counter()
        with torch.no_grad():
            trace = self.policy.select(self.policy.score(layer).float(), layer, self.budgets[layer_idx])
        kept = trace.kept.to(layer.keys.device)
        values = gather_rows(layer.values, kept)
        merge_values(values, layer.values, kept, trace.merge_rows())  # KVCrush merge="values" (else no-op)
        storage = self.policy.storage()
        if storage.quantized:  # the new selection's representatives get their own precision
            trace.row_bits = storage.row_bits(trace.kept, trace.representative_tokens())
        set_layer_rows(self.cache, layer_idx, gather_rows(layer.keys, kept), values, storage, trace.row_bits)
        self.positions[layer_idx] = self.positions[layer_idx].gather(1, kept)
        # The buffered rows stay aligned with the last cache slots only as far as the recent window kept them.
        recent = self.recent[layer_idx]
        self.recent[layer_idx] = recent.last(trace.recent) if recent is not None else None
        seconds = time.perf_counter() - start
        self.seconds += seconds
        self.evictions.append(DecodeEviction(step, layer_idx, n_slots, self.positions[layer_idx].to("cpu"), trace,
                                             seconds))
