"""Run one policy (our engine) or one press (kvpress) on one benchmark item, with the same token ids.

Both engines get the item's `EncodedPrompt` as it is: the context ids are prefilled and compressed,
then the tail (question and chat-template suffix) is appended uncompressed at its true positions
(query-agnostic, what kvpress does), then the model decodes greedily, or scores a reference
continuation under teacher forcing. Matching budgets: a budget fraction ``b`` is kvpress's
``compression_ratio = 1 - b``. Our engine keeps ``ceil(b * N)`` tokens per head, kvpress
``int(b * N)``; the kept fraction measured on the real cache tensors is reported for both.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch

from benchmarks.grid import ENGINE_KVPRESS, PolicySpec
from benchmarks.tasks import Item
from kvcrush import LoadedModel, generate_encoded, make_policy
from kvcrush.generate import stop_ids

NAN = float("nan")


@dataclass
class Outcome:
    """What one run produced and cost, in the same terms for both engines.

    kv_fraction: KV bytes of the budgeted tokens after / before eviction (real tensors).
    score_s / select_s / crush_s: NaN for kvpress (its scoring runs inside the prefill forward and is
    counted in prefill_s). decode_s: greedy decoding only (the question's forward excluded).
    """

    text: str
    new_ids: list[int]
    nll: float | None
    kv_bytes_before: int
    kv_bytes_after: int
    prefill_s: float
    score_s: float
    select_s: float
    crush_s: float
    decode_s: float
    decode_tokens: int
    kept: list[torch.Tensor] | None = field(default=None, repr=False)

    @property
    def kv_fraction(self) -> float:
        return self.kv_bytes_after / self.kv_bytes_before if self.kv_bytes_before else NAN

    @property
    def decode_ms_per_token(self) -> float:
        return 1000.0 * self.decode_s / self.decode_tokens if self.decode_tokens else NAN


def run_full(lm: LoadedModel, item: Item) -> Outcome:
    """The uncompressed reference on our engine."""
    return _run_ours(lm, make_policy("full"), item, query_aware=False, keep_kept=False)


def run_spec(lm: LoadedModel, spec: PolicySpec, budget: float, item: Item, seed: int,
             query_aware: bool = False, keep_kept: bool = False) -> Outcome:
    """Run `spec` at `budget` on `item` (query-aware, globally or by a `+qa` spec, is our engine only)."""
    if spec.engine == ENGINE_KVPRESS:
        return _run_kvpress(lm, spec, budget, item)
    return _run_ours(lm, spec.policy(budget, seed), item, query_aware or spec.query_aware, keep_kept)


def _run_ours(lm: LoadedModel, policy, item: Item, query_aware: bool, keep_kept: bool) -> Outcome:
    if item.reference_ids:
        result = generate_encoded(lm, item.encoded, policy, 0, query_aware, reference_ids=item.reference_ids)
    else:
        result = generate_encoded(lm, item.encoded, policy, item.max_new_tokens, query_aware)
    timings = result.timings
    kept = [layer.kept.clone() for layer in result.trace.layers] if keep_kept else None
    return Outcome(
        text=result.text, new_ids=list(result.new_token_ids), nll=result.reference_nll,
        kv_bytes_before=result.kv_bytes_before, kv_bytes_after=result.kv_bytes_after,
        prefill_s=timings.prefill_s, score_s=timings.score_s, select_s=timings.select_s, crush_s=timings.crush_s,
        decode_s=timings.decode_s, decode_tokens=timings.decode_tokens, kept=kept,
    )


def compression_ratio(budget: float) -> float:
    """kvpress's ratio for a budget fraction (rounded so 1 - 0.9 is 0.1, not 0.09999999999999998)."""
    return round(1.0 - budget, 9)


def _run_kvpress(lm: LoadedModel, spec: PolicySpec, budget: float, item: Item) -> Outcome:
    from benchmarks.kvpress_runner import run_press

    options = dict(spec.options)
    window = options.get("window_size")
    if window is not None and item.encoded.n_context <= window:  # SnapKVPress asserts N > window
        options["window_size"] = max(1, item.encoded.n_context - 1)
    result = run_press(
        lm.model, lm.tokenizer, spec.method, compression_ratio(budget), item.encoded.context_ids,
        item.encoded.tail_ids or None, max_new_tokens=item.max_new_tokens,
        continuation_ids=item.reference_ids or None, eos_token_ids=sorted(stop_ids(lm)), **options,
    )
    decode_s = result.decode_s - result.question_s if result.new_token_ids else 0.0
    return Outcome(
        text=result.text, new_ids=list(result.new_token_ids), nll=result.nll,
        kv_bytes_before=result.kv_bytes_before, kv_bytes_after=result.kv_bytes_after,
        prefill_s=result.prefill_s, score_s=NAN, select_s=NAN, crush_s=NAN,
        decode_s=decode_s, decode_tokens=len(result.new_token_ids),
    )


def kvpress_kept(lm: LoadedModel, spec: PolicySpec, budget: float, item: Item) -> list[torch.Tensor]:
    """Per layer `[kv_heads, n_kept]` context positions the press keeps on this item (one more prefill)."""
    from benchmarks.kvpress_runner import press_kept_indices

    options = dict(spec.options)
    window = options.get("window_size")
    if window is not None and item.encoded.n_context <= window:
        options["window_size"] = max(1, item.encoded.n_context - 1)
    kept = press_kept_indices(lm.model, spec.method, compression_ratio(budget), item.encoded.context_ids, **options)
    return [k.to("cpu") for k in kept]


def kept_jaccard(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> float:
    """Mean over layers and KV heads of |A ∩ B| / |A ∪ B| for two engines' kept context positions."""
    scores = []
    for a_layer, b_layer in zip(ours, theirs, strict=False):
        for a_row, b_row in zip(a_layer.tolist(), b_layer.tolist(), strict=False):
            a, b = set(a_row), set(b_row)
            union = a | b
            scores.append(len(a & b) / len(union) if union else 1.0)
    return sum(scores) / len(scores) if scores else NAN


def finite(value: float | None) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


@contextlib.contextmanager
def cuda_timing_hooks(lm: LoadedModel):
    """On CUDA, make our engine's wall-clock timings cover the GPU work they name.

    Our engine times with `time.perf_counter` and CUDA runs asynchronously: without a sync, the
    compression hook's clock would start while the layer's attention kernels are still queued (and
    charge them to selection), and a full-cache prefill would be timed at kernel launch. These hooks
    synchronise right before each compression hook (they are registered first, so they run first)
    and at the end of every model forward. No-op on CPU.
    """
    if lm.device.type != "cuda":
        yield
        return

    def sync(*_args, **_kwargs):
        torch.cuda.synchronize(lm.device)

    handles = [layer.self_attn.register_forward_hook(sync) for layer in lm.model.model.layers]
    handles.append(lm.model.register_forward_hook(sync))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
