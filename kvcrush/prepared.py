"""Prefill once, evict many: a prompt's full KV cache and scores, reused by every selection.

Inside the prefill forward every layer attends over its full keys; eviction only decides which rows
stay for decoding. So a layer's scores depend on the prompt and the scorer alone, never on the
budget, the split or the KVCrush options, and the compressed cache of any policy is a gather of the
full one (spec, section 6). `prepare` runs the model over the prompt once and keeps:

- the full `DynamicCache` over the tokens under the budget (never modified afterwards), every row of every
  layer: a sliding-window layer's selection is then restricted to the rows the model's own cache would hold
  (`kvcrush.sliding`), while its scores still see every key its queries attended to;
- each attention layer's input hidden states `[1, L, hidden]` (all rows when they fit in
  `hidden_limit` bytes, else the last `TAIL_ROWS` rows), from which a scorer recomputes the queries
  it needs (`kvcrush.attention.query_states`) without running the model again;
- the scores of every scorer computed so far, per layer `[heads, L]` float32, keyed by
  `Policy.scorer_key()`: switching between policies that share a scorer never scores twice.

A scorer that needs query rows that were not kept (H2O on a prompt too long to keep every row)
costs one more prefill, with a hook that scores each layer as the forward passes it.

Memory held by a prepared prompt (`nbytes`): the full KV cache, plus the kept hidden states
(`layers * rows * hidden * dtype bytes`: 135 MiB for SmolLM2-135M at 2k tokens in float32), plus
`layers * heads * L * 4` bytes per scorer.

    prepared = kvcrush.prepare(lm, text, question="What is ...?")
    trace = prepared.select(kvcrush.make_policy("kvcrush", budget=0.25))   # no decoding
    result = prepared.generate(kvcrush.make_policy("snapkv", budget=0.5))  # the full cache stays intact
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from kvcrush import limits
from kvcrush.attention import LayerInputs, attention_modules, forward_hooks
from kvcrush.compat import cache_kwargs, hook_cache
from kvcrush.decode_eviction import DecodeEvictor
from kvcrush.decoding import (
    Progress,
    extend,
    greedy_decode_batch,
    score_reference,
    score_reference_batch,
    stop_ids,
    timed_greedy_decode,
)
from kvcrush.devices import Stopwatch, releases_memory_on_error
from kvcrush.errors import PromptError, RunCancelled
from kvcrush.kvcache import cache_bytes, cache_lengths, compressed_copy, layer_bytes, prompt_cache
from kvcrush.models.loading import LoadedModel
from kvcrush.policies import Policy, make_policy
from kvcrush.prompts import EncodedPrompt, encode_prompt
from kvcrush.sliding import layer_windows
from kvcrush.trace import GenerationResult, LayerTrace, RunTrace, Timings, traces_to_host

HIDDEN_LIMIT = 2 * 1024**3  # at most this many bytes of kept hidden states (and a quarter of free memory)
TAIL_ROWS = 512  # rows kept when not all fit: SnapKV windows and TOVA's last query stay recomputable

ShouldStop = Callable[[], bool]


@dataclass
class _Scores:
    """One scorer's output on every layer: `[heads, L]` float32 per layer, and what computing it took."""

    per_layer: list[torch.Tensor]
    seconds: float


def check_length(lm: LoadedModel, n_tokens: int, max_new_tokens: int) -> None:
    """Refuse prompts the model cannot position, with the numbers."""
    limit = lm.max_tokens
    if n_tokens + max_new_tokens > limit:
        raise PromptError(
            f"The prompt has {n_tokens} tokens and {max_new_tokens} more would be generated, but "
            f"{lm.name} handles at most {limit} positions. Shorten the text by about "
            f"{n_tokens + max_new_tokens - limit} tokens or lower max_new_tokens."
        )


def check_max_new_tokens(max_new_tokens: int) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise PromptError(f"max_new_tokens must be a whole number >= 0, got {max_new_tokens!r}.")


def as_policy(policy: Policy | str) -> Policy:
    return make_policy(policy) if isinstance(policy, str) else policy


def _hidden_rows_to_keep(lm: LoadedModel, n_tokens: int, protected: int, hidden_limit: int | None) -> int:
    """All rows when every layer's hidden states fit the limit, else the last `TAIL_ROWS` (or the question)."""
    row_bytes = int(lm.config.hidden_size) * lm.dtype.itemsize * lm.n_layers
    limit = HIDDEN_LIMIT if hidden_limit is None else int(hidden_limit)
    free = [f for f in (limits.available_memory(device) for device in lm.devices) if f is not None]
    if free and hidden_limit is None:
        limit = min(limit, min(free) // 4)
    if n_tokens * row_bytes <= limit:
        return n_tokens
    return min(n_tokens, max(TAIL_ROWS, protected))


class PreparedPrompt:
    """One prompt prefilled once; `select` and `generate` serve any number of policies from it.

    Build it with `kvcrush.prepare` / `kvcrush.prepare_encoded`. Attributes:
    encoded: the prompt's token ids. query_aware: the question is the observation window (and kept).
    n_budgeted: tokens under the budget (the context; query-aware, the context and the question).
    cache: the full cache over those tokens, `[1, kv_heads, n_budgeted, head_dim]` per layer.
    prefill_s: seconds of the prefill. prefills: model forwards over the whole prompt so far (1, plus
    one per scorer that needed rows that were not kept).
    """

    def __init__(self, lm: LoadedModel, encoded: EncodedPrompt, query_aware: bool, cache: DynamicCache,
                 last_logits: torch.Tensor, layers: list[LayerInputs], prefill_s: float) -> None:
        self.lm = lm
        self.encoded = encoded
        self.query_aware = query_aware
        self.cache = cache
        self.last_logits = last_logits
        self.layers = layers
        self.prefill_s = prefill_s
        self.prefills = 1
        self.runs = 0
        self._scores: dict[tuple, _Scores] = {}
        self._token_strings: list[str] | None = None

    # --- what the prompt is ------------------------------------------------------------------------
    @property
    def budgeted_ids(self) -> list[int]:
        """Tokens under the budget: the context, plus the question when query-aware."""
        return self.encoded.context_ids + (self.encoded.question_ids if self.query_aware else [])

    @property
    def appended_ids(self) -> list[int]:
        """Tokens appended uncompressed after eviction: question and template suffix (query-aware: the suffix)."""
        return self.encoded.suffix_ids if self.query_aware else self.encoded.tail_ids

    @property
    def n_budgeted(self) -> int:
        return len(self.budgeted_ids)

    @property
    def n_question(self) -> int:
        return len(self.encoded.question_ids)

    @property
    def hidden_rows(self) -> int:
        """Rows of hidden states kept per layer (from the end of the prompt)."""
        return self.n_budgeted - self.layers[0].hidden_offset if self.layers else 0

    @property
    def scorers(self) -> list[tuple]:
        """Keys of the scorers computed so far."""
        return list(self._scores)

    @property
    def nbytes(self) -> int:
        """Memory this prepared prompt holds: full KV cache, kept hidden states and cached scores."""
        hidden = sum(layer.hidden_states.numel() * layer.hidden_states.element_size() for layer in self.layers)
        scores = sum(t.numel() * t.element_size() for entry in self._scores.values() for t in entry.per_layer)
        return cache_bytes(self.cache) + hidden + scores

    @property
    def held_bytes(self) -> int:
        """KV bytes of the prompt as the model's own cache holds them: every row, except that a sliding-window
        layer holds only its last `W - 1` (the "before" of every run's byte count)."""
        return sum(layer_bytes(cached.keys, cached.values, inputs.n_context - inputs.held_from)
                   for cached, inputs in zip(self.cache.layers, self.layers, strict=True))

    def token_strings(self) -> list[str]:
        """Each budgeted token as text (decoded once)."""
        if self._token_strings is None:
            decode = self.lm.tokenizer.decode
            self._token_strings = [decode([i]) for i in self.budgeted_ids]
        return self._token_strings

    # --- scores ------------------------------------------------------------------------------------
    def _needs_scores(self, policy: Policy) -> bool:
        return policy.evicts and any(not policy.plan(layer.held()).no_op for layer in self.layers)

    def needs_second_prefill(self, policy: Policy) -> bool:
        """Whether scoring `policy` runs the model over the prompt again: its scorer has not run here and needs
        query rows whose hidden states were not kept (H2O on a prompt too long to keep every row)."""
        return (self._needs_scores(policy) and policy.scorer_key() not in self._scores
                and any(layer.hidden_offset > policy.query_rows(layer)[0] for layer in self.layers))

    def scores(self, policy: Policy, should_stop: ShouldStop | None = None) -> tuple[list[torch.Tensor], bool]:
        """Per layer `[heads, n_budgeted]` float32 scores of `policy`'s scorer; and whether they were cached."""
        key = policy.scorer_key()
        entry = self._scores.get(key)
        if entry is not None:
            return entry.per_layer, True
        with self.lm.lock, torch.no_grad():
            if all(layer.hidden_offset <= policy.query_rows(layer)[0] for layer in self.layers):
                watch = Stopwatch(self.lm.model)
                per_layer = []
                with watch.timing():
                    for layer in self.layers:
                        if should_stop is not None and should_stop():
                            raise RunCancelled("The run was cancelled.")
                        per_layer.append(policy.score(layer).float())
                seconds = watch.seconds
            else:
                per_layer, seconds = self._score_in_prefill(policy, should_stop)
        self._scores[key] = _Scores(per_layer, seconds)
        return per_layer, False

    def _score_in_prefill(self, policy: Policy, should_stop: ShouldStop | None) -> tuple[list[torch.Tensor], float]:
        """Prefill again, scoring each layer inside the forward (for scorers whose query rows were not kept)."""
        per_layer: list[torch.Tensor] = []
        watch = Stopwatch(self.lm.model)  # the layers' own attention is not scoring time

        def hook(module, args, kwargs, output):
            if should_stop is not None and should_stop():
                raise RunCancelled("The run was cancelled.")
            with watch.timing():
                kept = self.layers[module.layer_idx]
                layer = _layer_inputs(module, kwargs, kept.n_layers, kept.n_context, kept.window_start,
                                      kept.query_aware, 0, kept.sliding_window)
                per_layer.append(policy.score(layer).float())
            return output

        with forward_hooks(attention_modules(self.lm.model), hook):
            self.lm.model(input_ids=torch.tensor([self.budgeted_ids], device=self.lm.device),
                          **cache_kwargs(self.lm.model, prompt_cache(self.lm.model.config)), use_cache=True,
                          logits_to_keep=1)
        self.prefills += 1
        return per_layer, watch.seconds

    # --- selection ---------------------------------------------------------------------------------
    @releases_memory_on_error("selecting the kept tokens")
    def select(self, policy: Policy | str, should_stop: ShouldStop | None = None) -> RunTrace:
        """Which tokens each KV head of each layer keeps under `policy`, and why (no decoding).

        Scores come from the cache when this policy's scorer already ran on this prompt.
        """
        policy = as_policy(policy)
        timings = Timings(prefill_s=self.prefill_s, prefill_reused=self.runs > 0)
        per_layer: list[torch.Tensor | None] = [None] * len(self.layers)
        if self._needs_scores(policy):
            per_layer, timings.score_reused = self.scores(policy, should_stop)  # type: ignore[assignment]
            timings.score_s = self._scores[policy.scorer_key()].seconds
        watch = Stopwatch(self.lm.model)
        with watch.timing(), torch.no_grad():
            # A sliding layer chooses among the rows it holds (`LayerInputs.held`), then speaks in prompt positions.
            views = [layer.held() for layer in self.layers]
            held = [None if scores is None else scores[:, view.held_offset:]
                    for scores, view in zip(per_layer, views, strict=True)]
            # Splits that depend on every layer's scores (KVCrush's adaptive split) are set before any layer.
            fractions = policy.layer_crush_fractions(held, views)
            traces = policy.select_layers(held, views, fractions)
            traces_to_host(traces)  # every layer's trace reaches the CPU in one copy per device
            traces = [trace.shifted(view.held_offset, layer.n_context) if view.held_offset else trace
                      for trace, view, layer in zip(traces, views, self.layers, strict=True)]
        timings.select_s = watch.seconds
        timings.crush_s = sum(trace.crush_s for trace in traces)
        self.runs += 1
        return self._run_trace(policy, traces, timings)

    def _check_selection(self, selection: RunTrace, policy: Policy) -> None:
        if (selection.policy != policy.describe() or selection.n_context != self.n_budgeted
                or selection.query_aware != self.query_aware or len(selection.layers) != len(self.layers)):
            raise ValueError("This selection was made for another policy or prompt: call select(policy) on this "
                             "prepared prompt, or pass no selection.")

    def _run_trace(self, policy: Policy, traces: list[LayerTrace], timings: Timings) -> RunTrace:
        storage = policy.storage()
        if storage.quantized:  # which precision each kept row will be stored at (kvcrush.quant)
            for layer in traces:
                layer.row_bits = storage.row_bits(layer.kept, None if layer.no_op else layer.representative_tokens())
        return RunTrace(
            policy=policy.describe(), model=self.lm.name, token_strings=self.token_strings(),
            n_context=self.n_budgeted, n_question=self.n_question, query_aware=self.query_aware,
            layers=traces, timings=timings,
        )

    # --- generation --------------------------------------------------------------------------------
    @releases_memory_on_error("generating the answer")
    def generate(
        self,
        policy: Policy | str,
        max_new_tokens: int = 64,
        reference_ids: list[int] | None = None,
        progress: Progress | None = None,
        should_stop: ShouldStop | None = None,
        on_token: Callable[[list[int]], None] | None = None,
        selection: RunTrace | None = None,
        stop_at_newline: bool = False,
        observer=None,
    ) -> GenerationResult:
        """Compress with `policy` (a gather of the full cache, which stays intact), append the tail, decode.

        `reference_ids` adds their teacher-forced NLL after the tail (`max_new_tokens=0` only scores them).
        `on_token(ids_so_far)` is called after every decoded token, to stream the answer.
        `selection`: what `select(policy)` on this prompt already returned, so it is not selected again
        (a trace of another policy or prompt is refused).
        `stop_at_newline`: the answer also ends after a token containing a line break (one-line answers).
        The result's `reference` holds the per-token NLL and argmax agreement of `reference_ids`
        (`kvcrush.decoding.ReferenceScores`), `reference_nll` their mean NLL.
        `observer`: an object whose `watch(prepared, trace, cache, evictor)` context manager is entered, under
        the model's lock, around appending the tail and decoding (e.g. `kvcrush.attention_use.AttentionRecorder`,
        which hooks the attention layers for this decode only); ignored when nothing is decoded.
        """
        policy = as_policy(policy)
        check_max_new_tokens(max_new_tokens)
        reference = list(reference_ids or [])
        trace = self._checked_selection(policy, len(reference), max_new_tokens, selection, should_stop)
        timings = trace.timings
        model = self.lm.model
        with self.lm.lock, torch.no_grad(), contextlib.ExitStack() as watching:
            cache = self._gather(trace, policy)
            bytes_before = self.held_bytes
            bytes_after = cache_bytes(cache)

            evictor = self._evictor(policy, cache, trace) if policy.decode_interval and max_new_tokens else None
            if observer is not None and max_new_tokens:
                watching.enter_context(observer.watch(self, trace, cache, evictor))
            logits = self.last_logits
            # Scoring only: the tail and the reference go through the model in one forward.
            lead = self.appended_ids if reference and not max_new_tokens else []
            tail = Stopwatch(model)
            with tail.timing():
                if self.appended_ids and not lead:
                    with evictor.capturing() if evictor else contextlib.nullcontext():  # its window may need the tail
                        logits = extend(model, cache, self.appended_ids, self.n_budgeted, last_only=True)[-1]
                    if evictor:
                        evictor.append_positions(self.n_budgeted, len(self.appended_ids))
            timings.prefill_s += tail.seconds
            position = len(self.encoded.all_ids)

            scores = None
            if lead:
                scores = score_reference(model, cache, logits, self.n_budgeted, reference, lead_ids=lead)
            elif reference:  # scored on the compressed prompt, without decode-time eviction
                scratch = copy.deepcopy(cache) if max_new_tokens else cache
                scores = score_reference(model, scratch, logits, position, reference)
            new_ids: list[int] = []
            if max_new_tokens:
                after_forward = (lambda n: evictor.after_forward(n, position + n - 1)) if evictor else None
                stops = stop_ids(model, self.lm.tokenizer, stop_at_newline)
                with evictor.capturing() if evictor else contextlib.nullcontext():
                    new_ids, timings.decode_s = timed_greedy_decode(
                        model, cache, logits, position, max_new_tokens, stops,
                        progress=progress, should_stop=should_stop, on_token=on_token, after_forward=after_forward)
                timings.decode_tokens = len(new_ids)
                timings.decode_evict_s = evictor.seconds if evictor else 0.0
            final = cache_bytes(cache)
        text = self.lm.tokenizer.decode(new_ids, skip_special_tokens=True)
        result = GenerationResult(text, new_ids, bytes_before, bytes_after, timings, trace,
                                  None if scores is None else scores.nll, final,
                                  n_appended=len(self.appended_ids), reference=scores)
        if evictor is not None:
            result.decode_evictions = evictor.evictions
            result.peak_cache_tokens = evictor.peak_tokens
            result.cache_positions = [p.to("cpu") for p in evictor.positions]
        return result

    def _checked_selection(self, policy: Policy, n_reference: int, max_new_tokens: int,
                           selection: RunTrace | None, should_stop: ShouldStop | None) -> RunTrace:
        """Refuse runs the model cannot fit, then select (or check and copy the given selection)."""
        n_positions = len(self.encoded.all_ids) + n_reference
        check_length(self.lm, n_positions, max_new_tokens)
        limits.preflight(self.lm, n_positions, max_new_tokens, policy, prepared=self)
        if selection is None:
            return self.select(policy, should_stop)
        self._check_selection(selection, policy)
        return dataclasses.replace(selection, timings=dataclasses.replace(selection.timings))

    def _gather(self, trace: RunTrace, policy: Policy) -> DynamicCache:
        """The compressed cache of a selection (merged values applied, rows stored at the policy's precision);
        its time goes to `select_s`."""
        watch = Stopwatch(self.lm.model)
        with watch.timing():
            kept = [None if layer.no_op and not layer.held_from else layer.kept for layer in trace.layers]
            merges = [None if layer.no_op else layer.merge_rows() for layer in trace.layers]  # merge="values"
            cache = compressed_copy(self.cache, kept, self.lm.model.config, merges, policy.storage(),
                                    [layer.row_bits for layer in trace.layers])
        trace.timings.select_s += watch.seconds
        return cache

    @releases_memory_on_error("scoring the reference")
    def score_many(self, policies: list[Policy | str], reference_ids: list[int], batch_size: int = 16,
                   should_stop: ShouldStop | None = None) -> list[GenerationResult]:
        """`generate(policy, 0, reference_ids)` for every policy, batched: what the benchmark's scoring tasks run.

        Each policy's compressed cache is gathered as `generate` gathers it; caches holding the same
        number of tokens in every layer (any policies at one budget, PyramidKV's at one budget) are
        stacked on the batch axis, up to `batch_size` at a time, and the tail and the reference (without a
        tail, the reference after the prefill's last logits) go through the model once per batch
        (`kvcrush.decoding.score_reference_batch`; on 2 CPU cores a
        batch of 16 costs about half as much per policy). Results equal `generate`'s to float rounding;
        each result's `prefill_s` gets an equal share of its batch's forward.
        """
        reference = list(reference_ids)
        if not reference:
            raise PromptError("score_many needs reference_ids to score.")
        results: list[GenerationResult | None] = [None] * len(policies)
        bytes_before = self.held_bytes
        # Without a tail, the prefill's last logits predict the first reference token (as in `generate`).
        first_logits = None if self.appended_ids else self.last_logits

        def flush(members: list[tuple[int, RunTrace, int]], caches: list[DynamicCache]) -> None:
            scores, share = score_reference_batch(self.lm.model, caches, self.n_budgeted, reference,
                                                  self.appended_ids, first_logits)
            for (index, trace, bytes_after), score in zip(members, scores, strict=True):
                trace.timings.prefill_s += share
                results[index] = GenerationResult("", [], bytes_before, bytes_after, trace.timings, trace, score.nll,
                                                  None, n_appended=len(self.appended_ids), reference=score)

        self._in_batches([as_policy(p) for p in policies], None, len(reference), 0, batch_size, should_stop, flush)
        return results  # type: ignore[return-value]

    @releases_memory_on_error("generating the answers")
    def generate_many(self, policies: list[Policy | str], max_new_tokens: int, reference_ids: list[int] | None = None,
                      stop_at_newline: bool = False, batch_size: int = 16,
                      should_stop: ShouldStop | None = None) -> list[GenerationResult]:
        """`generate(policy, max_new_tokens, reference_ids, stop_at_newline=...)` for every policy, batched: what
        the benchmark's answering tasks run.

        The reference is scored by `score_many`; then caches of equal shape decode together, up to
        `batch_size` at a time, one forward per step (`kvcrush.decoding.greedy_decode_batch`). Token ids
        equal `generate`'s up to float rounding. The tail goes through the model twice (with the reference,
        and before decoding) and `prefill_s` holds both shares; `decode_s` is an equal share of the batch's
        steps. Policies whose cache changes while decoding (`decode_interval`) or that store it quantized
        (rows leave the residual window quantized, which a stacked cache would not do) run one at a time.
        """
        policies = [as_policy(policy) for policy in policies]
        check_max_new_tokens(max_new_tokens)
        reference = list(reference_ids or [])
        if not max_new_tokens or not self.appended_ids:
            if not max_new_tokens and reference:
                return self.score_many(policies, reference, batch_size, should_stop)
            return [self.generate(policy, max_new_tokens, reference or None, should_stop=should_stop,
                                  stop_at_newline=stop_at_newline) for policy in policies]
        alone = {i for i, policy in enumerate(policies) if policy.decode_interval or policy.storage().quantized}
        together = [i for i in range(len(policies)) if i not in alone]
        results: list[GenerationResult | None] = [None] * len(policies)
        for index in sorted(alone):
            results[index] = self.generate(policies[index], max_new_tokens, reference or None,
                                           should_stop=should_stop, stop_at_newline=stop_at_newline)
        scored = self.score_many([policies[i] for i in together], reference, batch_size, should_stop) \
            if reference and together else None
        stops = stop_ids(self.lm.model, self.lm.tokenizer, stop_at_newline)
        bytes_before = self.held_bytes
        per_token = self.lm.kv_bytes_per_token()
        tail = self.appended_ids

        def flush(members: list[tuple[int, RunTrace, int]], caches: list[DynamicCache]) -> None:
            decoded = greedy_decode_batch(self.lm.model, caches, tail, self.n_budgeted, max_new_tokens, stops)
            for (index, trace, bytes_after), ids in zip(members, decoded.new_ids, strict=True):
                timings = trace.timings
                timings.prefill_s += decoded.tail_s
                timings.decode_s, timings.decode_tokens = decoded.decode_s, len(ids)
                score = scored[index].reference if scored else None
                final = bytes_after + (len(tail) + len(ids) - 1) * per_token  # the last token is never fed back
                results[together[index]] = GenerationResult(
                    self.lm.tokenizer.decode(ids, skip_special_tokens=True), ids, bytes_before, bytes_after, timings,
                    trace, None if score is None else score.nll, final, n_appended=len(tail), reference=score)

        selections = [result.trace for result in scored] if scored else None
        self._in_batches([policies[i] for i in together], selections, len(reference), max_new_tokens, batch_size,
                         should_stop, flush)
        return results  # type: ignore[return-value]

    def _in_batches(self, policies: list[Policy], selections: list[RunTrace] | None, n_reference: int,
                    max_new_tokens: int, batch_size: int, should_stop: ShouldStop | None,
                    flush: Callable[[list[tuple[int, RunTrace, int]], list[DynamicCache]], None]) -> None:
        """Select (or take `selections[i]`) and gather every policy as `generate` does, and hand caches of equal
        shape (tokens per layer) to `flush(members, caches)`, up to `batch_size` at a time, under the model's lock:
        `members[i]` is `(index, trace, bytes)` of `caches[i]` (its KV bytes measured before the batched forward
        stacks and frees the single copies).

        Caches wait in a bucket per shape and go as soon as it is full, so at most a few batches are held.
        """
        pending: dict[tuple[int, ...], list[tuple[int, RunTrace, DynamicCache]]] = {}

        def hand_over(bucket: list[tuple[int, RunTrace, DynamicCache]]) -> None:
            caches = [cache for _, _, cache in bucket]
            members = [(index, trace, cache_bytes(cache)) for index, trace, cache in bucket]
            bucket.clear()  # the batched forward frees the single copies once stacked
            with self.lm.lock:
                flush(members, caches)

        for index, policy in enumerate(policies):
            if should_stop is not None and should_stop():
                raise RunCancelled("The run was cancelled.")
            selection = selections[index] if selections is not None else None
            trace = self._checked_selection(policy, n_reference, max_new_tokens, selection, should_stop)
            with self.lm.lock, torch.no_grad():
                cache = self._gather(trace, policy)
            bucket = pending.setdefault(tuple(cache_lengths(cache)), [])
            bucket.append((index, trace, cache))
            if len(bucket) >= batch_size:
                hand_over(bucket)
        for bucket in pending.values():
            if bucket:
                hand_over(bucket)

    def _evictor(self, policy: Policy, cache: DynamicCache, trace: RunTrace) -> DecodeEvictor:
        """Decode-time eviction for `policy`, starting from the compressed prompt (the tail is appended next)."""
        positions = [layer.kept for layer in trace.layers]  # a no-op layer's kept set is every row it holds
        budgets = [int(p.shape[1]) for p in positions]
        return DecodeEvictor(self.lm, policy, cache, budgets, positions)


def _layer_inputs(module, kwargs: dict, n_layers: int, n_context: int, window_start: int, query_aware: bool,
                  hidden_offset: int, sliding_window: int | None) -> LayerInputs:
    """What a scorer may read about one layer, from its attention module's forward kwargs (inside the forward)."""
    layer_cache = hook_cache(kwargs).layers[module.layer_idx]
    cos, sin = kwargs["position_embeddings"]
    hidden = kwargs["hidden_states"]
    if hidden_offset:
        hidden = hidden[:, hidden_offset:].clone()  # a copy, so the whole activation can be freed
    return LayerInputs(module, module.layer_idx, n_layers, hidden, layer_cache.keys, layer_cache.values, cos, sin,
                       n_context, window_start, query_aware, hidden_offset, sliding_window)


@releases_memory_on_error("prefilling the prompt")
def prepare_encoded(
    lm: LoadedModel,
    encoded: EncodedPrompt,
    query_aware: bool = False,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
    hidden_limit: int | None = None,
) -> PreparedPrompt:
    """Prefill token ids already split into context, question and suffix (see `kvcrush.encode_prompt`).

    Query-aware (and a question given): the context and the question are prefilled and budgeted, the
    question is the observation window; otherwise the context alone. `hidden_limit` caps the bytes of
    hidden states kept for later scoring (default: `HIDDEN_LIMIT`, at most a quarter of free memory).
    """
    if encoded.n_context == 0:
        raise PromptError("The prompt is empty: paste or upload some text to compress.")
    query_aware = bool(query_aware and encoded.question_ids)
    budgeted = encoded.context_ids + (encoded.question_ids if query_aware else [])
    n_budgeted = len(budgeted)
    check_length(lm, len(encoded.all_ids), 0)
    keep_rows = _hidden_rows_to_keep(lm, n_budgeted, len(encoded.question_ids), hidden_limit)
    limits.preflight(lm, len(encoded.all_ids), 0, hidden_rows=keep_rows)
    offset = n_budgeted - keep_rows
    window_start = encoded.n_context
    layers: list[LayerInputs] = []

    def capture(module, args, kwargs, output):
        if should_stop is not None and should_stop():
            raise RunCancelled("The run was cancelled.")
        layers.append(_layer_inputs(module, kwargs, lm.n_layers, n_budgeted, window_start, query_aware, offset,
                                    windows[module.layer_idx]))
        if progress is not None:
            progress("prefill", len(layers), lm.n_layers)
        return output

    model = lm.model
    windows = layer_windows(model.config)
    cache = prompt_cache(model.config)
    watch = Stopwatch(model)
    with lm.lock, torch.no_grad(), forward_hooks(attention_modules(model), capture), watch.timing():
        output = model(input_ids=torch.tensor([budgeted], device=lm.device), **cache_kwargs(model, cache),
                       use_cache=True, logits_to_keep=1)
    return PreparedPrompt(lm, encoded, query_aware, cache, output.logits[0, -1].float(), layers, watch.seconds)


def prepare(
    lm: LoadedModel,
    prompt: str,
    question: str | None = None,
    query_aware: bool = False,
    chat_template: bool | None = None,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> PreparedPrompt:
    """Run the model over `prompt` (and `question`) once; select and generate from it as often as wanted."""
    encoded = encode_prompt(lm.tokenizer, prompt, question, chat_template)
    return prepare_encoded(lm, encoded, query_aware, progress, should_stop)


__all__ = ["PreparedPrompt", "prepare", "prepare_encoded", "check_length", "HIDDEN_LIMIT", "TAIL_ROWS"]

