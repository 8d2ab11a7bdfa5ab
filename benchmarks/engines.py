"""Run our policies (one prefill per item) and kvpress's presses on one benchmark item, with the same ids.

Both engines get the item's `EncodedPrompt` as it is: the context ids are prefilled and compressed,
then the tail (question and chat-template suffix) is appended uncompressed at its true positions
(query-agnostic, what kvpress does), then the model decodes greedily, or scores a reference
continuation under teacher forcing.

- **Our engine**: `ItemRuns` prefills an item once (`kvcrush.prepare_encoded`; once more only for
  query-aware runs, whose prefill also covers the question) and serves the full-cache reference and
  every policy x budget from it with `PreparedPrompt.generate`: a gather of the intact full cache,
  the tail, then decoding. Scores are computed once per scorer (`Policy.scorer_key`), so KVCrush over
  SnapKV reuses SnapKV's. A run's `Timings` still read as a standalone run's: ``prefill_s`` is the
  shared prefill plus this run's tail, ``score_s`` what the scores cost when they were computed.
- **kvpress**: every press run prefills under the press's own hooks (kvpress compresses inside the
  forward), then appends, decodes and scores with the same functions as our engine
  (`kvcrush.decoding`, see `benchmarks.kvpress_runner`).

Matching budgets: a budget fraction ``b`` is kvpress's ``compression_ratio = 1 - b``. Our engine keeps
``ceil(b * N)`` tokens per head, kvpress ``int(b * N)``; the kept fraction measured on the real cache
tensors (`kvcrush.kvcache.cache_bytes`) is reported for both. An equal-bytes spec of ours (``snapkv~4b``)
turns ``b`` into a budget in bytes on each prompt (`equal_bytes_budget`): what ``b`` of the prompt's
full-precision cache holds, so its rows, stored at fewer bits, are more tokens in no more bytes.
"""

from __future__ import annotations

import math

import torch

from benchmarks.grid import ENGINE_KVPRESS, ENGINE_OURS, PolicySpec
from benchmarks.outcome import NAN, Outcome
from benchmarks.tasks import Item
from kvcrush import LoadedModel, Policy, PreparedPrompt, make_policy, prepare_encoded
from kvcrush.quant import KVStorage
from kvcrush.trace import GenerationResult


def outcome_of(result: GenerationResult, keep_kept: bool = False) -> Outcome:
    """Our engine's `GenerationResult` as an `Outcome`."""
    timings = result.timings
    layers = result.trace.layers
    kept = [layer.kept.clone() for layer in layers] if keep_kept else None
    return Outcome(
        text=result.text, new_token_ids=list(result.new_token_ids), nll=result.reference_nll,
        kv_bytes_before=result.kv_bytes_before, kv_bytes_after=result.kv_bytes_after,
        prefill_s=timings.prefill_s, score_s=timings.score_s, select_s=timings.select_s, crush_s=timings.crush_s,
        decode_s=timings.decode_s, decode_tokens=timings.decode_tokens, kept=kept,
        prefill_reused=timings.prefill_reused, score_reused=timings.score_reused, reference=result.reference,
        kept_tokens=sum(int(layer.kept.shape[-1]) for layer in layers) / len(layers) if layers else NAN,
        budget_bytes=result.trace.policy.get("budget_bytes"),
    )


def equal_bytes_budget(prepared: PreparedPrompt, fraction: float) -> int:
    """The budget in bytes per KV head and layer that holds `fraction` of the prompt's full-precision cache.

    ``floor(fraction * N * full_token_bytes)``: N tokens under the budget, ``full_token_bytes`` one token's
    key and value rows in one KV head in the model's dtype. Floored, so it never exceeds what a
    full-precision run at the same fraction holds (``ceil(fraction * N)`` rows); the epsilon keeps a product
    that float rounding leaves just under a whole number (0.29 * 100 is 28.999999999999996) from losing a byte.
    """
    keys = prepared.cache.layers[0].keys
    full_token_bytes = KVStorage().token_bytes(16, int(keys.shape[-1]), keys.element_size())
    return max(1, math.floor(fraction * prepared.n_budgeted * full_token_bytes + 1e-6))


class ItemRuns:
    """Every run of one item: our engine prefills it once per mode, kvpress once per press run.

    `full()` is the uncompressed reference, `run(spec, budget)` one grid cell (either engine),
    `run_policy(policy)` any policy object. `prefills` counts our engine's forwards over the whole
    prompt so far. `close()` frees the prepared prompts (full cache, hidden states, scores).
    """

    def __init__(self, lm: LoadedModel, item: Item, seed: int = 0) -> None:
        self.lm = lm
        self.item = item
        self.seed = seed
        self._prepared: dict[bool, PreparedPrompt] = {}
        self._kvpress: dict[tuple[str, float], Outcome] = {}
        self._ours: dict[tuple[str, float], Outcome] = {}

    def run_ours_batch(self, specs: list[PolicySpec], budgets: list[float], query_aware: bool = False) -> None:
        """Every spec of ours x budget on this item, batched: scoring-only items through
        `PreparedPrompt.score_many`, answering items (SQuAD, HotpotQA) through `generate_many` (answers
        decoded in batches, one forward per step); `run` then hands each outcome out once."""
        item = self.item
        if not item.max_new_tokens and not item.reference_ids:
            return
        for qa in (False, True):
            mode = [spec for spec in specs if spec.engine == ENGINE_OURS and (query_aware or spec.query_aware) == qa]
            if not mode:
                continue
            prepared = self.prepared(qa)
            cells = [(spec, budget) for budget in budgets for spec in mode]
            policies = [self.policy(spec, budget, qa) for spec, budget in cells]
            if item.max_new_tokens:
                results = prepared.generate_many(policies, item.max_new_tokens, item.reference_ids or None,
                                                 stop_at_newline=item.stop_at_newline)
            else:
                results = prepared.score_many(policies, item.reference_ids)
            for (spec, budget), result in zip(cells, results, strict=True):
                self._ours[(spec.label, budget)] = outcome_of(result)

    def run_kvpress_batch(self, specs: list[PolicySpec], budgets: list[float]) -> None:
        """Run every kvpress spec x budget from one shared prefill per query mode (`run_kvpress_all`);
        `run` then hands each outcome out once."""
        self._kvpress.update(run_kvpress_all(self.lm, specs, budgets, self.item))

    def prepared(self, query_aware: bool = False) -> PreparedPrompt:
        """The item prefilled once (query-aware: context and question; without a question, the same one)."""
        key = bool(query_aware and self.item.encoded.question_ids)
        if key not in self._prepared:
            self._prepared[key] = prepare_encoded(self.lm, self.item.encoded, query_aware=key)
        return self._prepared[key]

    def policy(self, spec: PolicySpec, budget: float, query_aware: bool = False) -> Policy:
        """`spec` at `budget` on this item: an equal-bytes spec gets its budget in bytes from the prompt it runs on."""
        query_aware = query_aware or spec.query_aware
        budget_bytes = equal_bytes_budget(self.prepared(query_aware), budget) if spec.equal_bytes else None
        return spec.policy(budget, self.seed, budget_bytes)

    @property
    def prefills(self) -> int:
        return sum(prepared.prefills for prepared in self._prepared.values())

    def full(self) -> Outcome:
        """The uncompressed reference (query-agnostic)."""
        return self.run_policy(make_policy("full"))

    def run(self, spec: PolicySpec, budget: float, query_aware: bool = False, keep_kept: bool = False) -> Outcome:
        """`spec` at `budget` (query-aware, globally or by a `+qa` spec, is our engine only)."""
        if spec.engine == ENGINE_KVPRESS:
            outcome = self._kvpress.pop((spec.label, budget), None)
            return outcome if outcome is not None else run_kvpress(self.lm, spec, budget, self.item)
        batched = None if keep_kept else self._ours.pop((spec.label, budget), None)
        if batched is not None:
            return batched
        return self.run_policy(self.policy(spec, budget, query_aware), query_aware or spec.query_aware, keep_kept)

    def run_policy(self, policy: Policy, query_aware: bool = False, keep_kept: bool = False,
                   max_new_tokens: int | None = None) -> Outcome:
        """One of our policies on the shared prefill: decode the item's answer and/or score its reference.

        `max_new_tokens=0` only selects, gathers and appends the tail (what a policy costs, no decoding).
        """
        item = self.item
        prepared = self.prepared(query_aware)
        if max_new_tokens is not None:
            result = prepared.generate(policy, max_new_tokens)
        else:
            result = prepared.generate(policy, item.max_new_tokens, reference_ids=item.reference_ids,
                                       stop_at_newline=item.stop_at_newline)
        return outcome_of(result, keep_kept)

    def run_base(self, spec: PolicySpec, budget: float, query_aware: bool = False) -> Outcome:
        """KVCrush's base policy alone, exactly as inside `spec`, on the same prefill and scores, not decoding."""
        policy = self.policy(spec, budget, query_aware)
        if not spec.is_kvcrush:
            raise ValueError(f"{spec.label} is not KVCrush: it has no base policy.")
        return self.run_policy(policy.base, query_aware or spec.query_aware, max_new_tokens=0)

    def close(self) -> None:
        self._prepared.clear()
        self._ours.clear()
        self._kvpress.clear()


def kvcrush_overhead(kvcrush: Outcome, base: Outcome) -> dict[str, float]:
    """KVCrush's whole extra cost over its base on the same prefill and scores, as a share of its latency.

    ``overhead_s = (score_s + select_s) - (base score_s + base select_s)``: the scores are shared, so this
    is everything KVCrush adds (signatures, grouping, the refill around the representatives, the
    trace); ``overhead_pct = 100 * overhead_s / e2e_s`` (KVCrush's end-to-end latency). ``crush_s`` and
    ``crush_pct`` are the part KVCrush times itself, kept as a breakdown.
    """
    overhead = kvcrush.policy_s - base.policy_s
    e2e = kvcrush.e2e_s
    return {
        "base_score_s": base.score_s, "base_select_s": base.select_s, "base_policy_s": base.policy_s,
        "policy_s": kvcrush.policy_s, "overhead_s": overhead,
        "overhead_pct": 100 * overhead / e2e if e2e else NAN,
        "crush_pct": 100 * kvcrush.crush_s / e2e if e2e else NAN,
    }


def compression_ratio(budget: float) -> float:
    """kvpress's ratio for a budget fraction (rounded so 1 - 0.9 is 0.1, not 0.09999999999999998)."""
    return round(1.0 - budget, 9)


def _press_options(spec: PolicySpec, item: Item, n_context: int | None = None) -> dict:
    options = dict(spec.options)
    n_context = item.encoded.n_context if n_context is None else n_context
    window = options.get("window_size")
    if window is not None and n_context <= window:  # SnapKVPress asserts N > window
        options["window_size"] = max(1, n_context - 1)
    return options


def _kvpress_parts(item: Item, query_aware: bool) -> tuple[list[int], list[int]]:
    """(compressed context, appended tail) for kvpress: query-aware, the question is compressed with the context."""
    encoded = item.encoded
    if query_aware and encoded.question_ids:
        return encoded.context_ids + encoded.question_ids, encoded.suffix_ids
    return encoded.context_ids, encoded.tail_ids


def run_kvpress(lm: LoadedModel, spec: PolicySpec, budget: float, item: Item) -> Outcome:
    """One press on one item: its own compressed prefill, then our engine's appending, decoding and scoring."""
    return run_kvpress_all(lm, [spec], [budget], item)[(spec.label, budget)]


def run_kvpress_all(lm: LoadedModel, specs: list[PolicySpec], budgets: list[float], item: Item
                    ) -> dict[tuple[str, float], Outcome]:
    """Every kvpress spec at every budget on one item, from one shared prefill per query mode.

    `benchmarks.kvpress_runner.run_presses`: each press's own ``compress`` runs in a hook of one forward
    over the context and leaves the cache a prefill under that press alone would leave (tested equal);
    then each cache gets the tail appended and is decoded and/or scored like ours. Each outcome's
    ``prefill_s`` is what a prefill under that press alone costs (the shared forward plus its own hook).
    """
    outcomes: dict[tuple[str, float], Outcome] = {}
    if not any(spec.engine == ENGINE_KVPRESS for spec in specs):
        return outcomes  # a grid without kvpress specs runs where kvpress is not installed
    from benchmarks.kvpress_runner import run_presses

    for query_aware in (False, True):
        mode = [spec for spec in specs if spec.engine == ENGINE_KVPRESS and spec.query_aware == query_aware]
        if not mode:
            continue
        context, tail = _kvpress_parts(item, query_aware)
        jobs = {(spec.method, compression_ratio(budget)): (spec, budget) for spec in mode for budget in budgets}
        options = {spec.method: _press_options(spec, item, len(context)) for spec in mode}
        results = run_presses(lm.model, lm.tokenizer, [(name, ratio, options[name]) for name, ratio in jobs],
                              context, tail or None, max_new_tokens=item.max_new_tokens,
                              continuation_ids=item.reference_ids or None, stop_at_newline=item.stop_at_newline,
                              decode_with_reference=True)
        for key, outcome in results.items():  # already `Outcome`s, the type our runs give
            spec, budget = jobs[key]
            outcomes[(spec.label, budget)] = outcome
    return outcomes


def kvpress_kept(lm: LoadedModel, spec: PolicySpec, budget: float, item: Item) -> list[torch.Tensor]:
    """Per layer `[kv_heads, n_kept]` context positions the press keeps on this item (one more prefill)."""
    from benchmarks.kvpress_runner import press_kept_indices

    kept = press_kept_indices(lm.model, spec.method, compression_ratio(budget), item.encoded.context_ids,
                              **_press_options(spec, item))
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
