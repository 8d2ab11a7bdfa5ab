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
tokens) except what the policy itself protects (sink, recent window). Each eviction is recorded by what it
changed (`DecodeEviction`: the true positions each head dropped, and KVCrush's representatives), not by a full
trace: the cache after every generated token is rebuilt from those deltas (`kvcrush.explain.decode_cache`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from kvcrush.attention import LayerInputs, attention_modules, forward_hooks
from kvcrush.devices import Stopwatch, layer_devices
from kvcrush.host import to_device
from kvcrush.kvcache import gather_rows, merge_values, set_layer_rows
from kvcrush.policies import Policy
from kvcrush.quantized_cache import QuantizedKVLayer
from kvcrush.trace import LayerTrace, MergeRows, traces_to_host

MIN_BUFFER = 32  # recent tokens whose attention inputs are kept for scoring (more if the policy's window is)


@dataclass
class DecodeEviction:
    """What one layer's eviction after `step` generated tokens changed.

    before: tokens per head just before; kept: tokens per head after (`T`). evicted: `[kv_heads, before - kept]`
    int32 true positions each head dropped, ascending (prompt positions below `n_prompt`, appended or generated
    ones above); what a head holds afterwards is what it held before without them. representatives: KVCrush's
    `[kv_heads, R]` int32 true positions of the representatives this eviction kept (None for other policies).
    crush_fraction: the split this one-layer eviction used (KVCrush; the fixed one).
    """

    step: int
    layer: int
    before: int
    kept: int
    evicted: torch.Tensor
    seconds: float
    representatives: torch.Tensor | None = None
    crush_fraction: float | None = None

    def tensors(self) -> list[torch.Tensor]:
        """What this record holds (for counting a session's bytes)."""
        return [t for t in (self.evicted, self.representatives) if t is not None]


def _changes(positions: torch.Tensor, kept: torch.Tensor, trace: LayerTrace
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(`[kv_heads, slots - T]` true positions each head drops, ascending; `[kv_heads, R]` those of the
    representatives or None), on the layer's device without a host read: every head keeps exactly `T` of its
    `slots` (`kept` `[kv_heads, T]` slot indices), so the dropped slots are the first `slots - T` in an order that
    puts the kept ones last."""
    heads, n_slots = positions.shape
    is_kept = torch.zeros((heads, n_slots), dtype=torch.uint8, device=positions.device).scatter_(1, kept, 1)
    dropped = torch.argsort(is_kept, dim=1, stable=True)[:, : n_slots - kept.shape[1]]
    evicted = positions.gather(1, dropped).sort(dim=1).values.to(torch.int32)
    representatives = None
    if trace.representatives is not None and not trace.no_op:
        slots = trace.representative_tokens().long().expand(heads, -1)
        representatives = positions.gather(1, slots).to(torch.int32)
    return evicted, representatives


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
        self.positions = [p.to(device) for p, device in zip(positions, layer_devices(lm.model), strict=True)]
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

        with forward_hooks(self.modules, hook):
            yield self

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
        """The token at true `position` (the `step`-th generated) is in the cache: evict where due.

        Every layer due at this step is evicted together (`_evict`), so an eviction waits for the device a
        fixed number of times whatever the number of layers.
        """
        self.append_positions(position, 1)
        due: list[tuple[int, int, LayerInputs]] = []
        for layer_idx, layer_cache in enumerate(self.cache.layers):
            n_slots = layer_cache.get_seq_length()  # a host count, also for a quantized layer
            if n_slots >= self.budgets[layer_idx] + self.interval:
                layer = self._layer_inputs(layer_idx, layer_cache, n_slots)
                if layer is not None:  # else fewer recent tokens buffered than the policy's window: wait for more
                    due.append((layer_idx, n_slots, layer))
        if due:
            self._evict(step, due)

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

    def _evict(self, step: int, due: list[tuple[int, int, LayerInputs]]) -> None:
        """Evict the layers in `due` (`(layer index, slots held, inputs)`) back to their budgets, all at once.

        Scores, selection and the gathers stay on the layers' devices; the traces, kept positions and storage
        bits then reach the host in one copy per device (`traces_to_host`), and KVCrush's merge rows go back in
        one copy (`to_device`). The time, synchronised, is shared equally by the layers' records.
        """
        layers = [layer for _, _, layer in due]
        watch = Stopwatch({layer.keys.device for layer in layers})
        with watch.timing(), torch.no_grad():
            storage = self.policy.storage()
            scores = [self.policy.score(layer).float() for layer in layers]
            traces = self.policy.select_layers(scores, layers, None, [self.budgets[i] for i, _, _ in due])
            kept = [trace.kept for trace in traces]
            changes = [_changes(self.positions[i], index, trace) for (i, _, _), index, trace in zip(due, kept, traces,
                                                                                                 strict=True)]
            bits = [storage.row_bits(trace.kept, trace.representative_tokens()) for trace in traces] \
                if storage.quantized else []  # the new selection's representatives get their own precision
            for (layer_idx, _, _), index in zip(due, kept, strict=True):
                self.positions[layer_idx] = self.positions[layer_idx].gather(1, index)
                if getattr(self.cache, "key_positions", None) is not None:  # sliding-window models: true positions
                    self.cache.key_positions.gather(layer_idx, index)
            records = [t for change in changes for t in change if t is not None]
            moved = traces_to_host(traces, records + bits)
            host_records, host_bits = iter(moved[: len(records)]), moved[len(records):]
            changes = [tuple(None if t is None else next(host_records) for t in change) for change in changes]
            merges = self._merge_rows(traces, kept)
            for n, ((layer_idx, _, layer), trace, index) in enumerate(zip(due, traces, kept, strict=True)):
                values = gather_rows(layer.values, index)
                merge_values(values, layer.values, index, merges[n])  # KVCrush merge="values" (else no-op)
                self._store(layer_idx, gather_rows(layer.keys, index), values, storage,
                            bits[n] if bits else None, host_bits[n] if bits else None)
                if bits:
                    trace.row_bits = host_bits[n]
                # The buffered rows stay aligned with the last cache slots only as far as the recent window kept them.
                recent = self.recent[layer_idx]
                self.recent[layer_idx] = recent.last(trace.recent) if recent is not None else None
        seconds = watch.seconds
        self.seconds += seconds
        for ((layer_idx, n_slots, _), trace, (evicted, representatives)) in zip(due, traces, changes, strict=True):
            self.evictions.append(DecodeEviction(step, layer_idx, n_slots, int(trace.kept.shape[1]), evicted,
                                                 seconds / len(due), representatives, trace.crush_fraction))

    @staticmethod
    def _merge_rows(traces: list[LayerTrace], kept: list[torch.Tensor]) -> list[MergeRows | None]:
        """Each host trace's value merge (`LayerTrace.merge_rows`), copied to its layer's device in one copy."""
        rows = [trace.merge_rows() for trace in traces]
        present = [(n, r) for n, r in enumerate(rows) if r is not None]
        if not present:
            return rows
        parts = [t for _, r in present for t in (r.targets, r.members, r.slot, r.weights)]
        devices = [kept[n].device for n, _ in present for _ in range(4)]
        copies = iter(to_device(parts, devices))
        for n, _ in present:
            rows[n] = MergeRows(next(copies), next(copies), next(copies), next(copies))
        return rows

    def _store(self, layer_idx: int, keys: torch.Tensor, values: torch.Tensor, storage,
               bits: torch.Tensor | None, host_bits: torch.Tensor | None) -> None:
        """Put a layer's kept rows back (quantized layers size their groups from the host copy of the bits)."""
        layer_cache = self.cache.layers[layer_idx]
        if bits is not None and isinstance(layer_cache, QuantizedKVLayer):
            layer_cache.set_rows(keys, values, bits, host_bits)
        else:
            set_layer_rows(self.cache, layer_idx, keys, values, storage, bits)
