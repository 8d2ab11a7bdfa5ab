"""Prefill once, evict many: exactness against fresh runs, and reuse counted in model forwards."""

from __future__ import annotations

import contextlib

import pytest
import torch

import kvcrush
from kvcrush.policies import POLICIES, make_policy
from kvcrush.prompts import encode_prompt

QUESTION = "Who wrote this essay?"


def _variants() -> list[tuple[str, dict]]:
    """Every policy once (kvcrush over each base), plus KVCrush at block granularity and head_reduction='all'."""
    cases = [(name, {}) for name in POLICIES if name != "kvcrush"]
    cases += [("kvcrush", {"base": base}) for base in kvcrush.BASE_CHOICES]
    cases += [("kvcrush", {"base": "snapkv", "granularity": "block", "block_size": 8}),
              ("kvcrush", {"base": "h2o", "head_reduction": "all", "anchor": "mean"}),
              ("snapkv", {"head_reduction": "all"})]
    return cases


VARIANTS = _variants()


@contextlib.contextmanager
def prompt_forwards(lm, n_tokens: int):
    """Counts the model's forward calls over at least `n_tokens` tokens (prefills), with a real pre-hook."""
    calls = []

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.shape[1] >= n_tokens:
            calls.append(ids.shape[1])

    handle = lm.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def _same_run(shared: kvcrush.GenerationResult, fresh: kvcrush.GenerationResult) -> None:
    assert shared.new_token_ids == fresh.new_token_ids
    assert (shared.kv_bytes_before, shared.kv_bytes_after) == (fresh.kv_bytes_before, fresh.kv_bytes_after)
    for a, b in zip(shared.trace.layers, fresh.trace.layers, strict=True):
        assert torch.equal(a.kept, b.kept), f"layer {a.layer} keeps different tokens"


@pytest.mark.parametrize("query_aware", [False, True], ids=["agnostic", "aware"])
def test_one_prepared_prompt_gives_every_policy_the_same_result_as_a_fresh_run(tiny_lm, essay_prompt, query_aware):
    encoded = encode_prompt(tiny_lm.tokenizer, essay_prompt, QUESTION)
    prepared = kvcrush.prepare_encoded(tiny_lm, encoded, query_aware=query_aware)
    full_keys = [layer.keys.clone() for layer in prepared.cache.layers]
    for name, options in VARIANTS:
        for budget in (0.3, 0.6):
            policy = make_policy(name, budget=budget, **options)
            shared = prepared.generate(policy, max_new_tokens=6)
            fresh = kvcrush.generate_encoded(tiny_lm, encoded, make_policy(name, budget=budget, **options),
                                             max_new_tokens=6, query_aware=query_aware)
            _same_run(shared, fresh)
    assert all(torch.equal(a, b.keys) for a, b in zip(full_keys, prepared.cache.layers, strict=True))
    assert prepared.prefills == 1


def test_many_selections_cost_one_prefill_and_one_scoring_per_scorer(tiny_lm, essay_prompt):
    encoded = encode_prompt(tiny_lm.tokenizer, essay_prompt, QUESTION)
    with prompt_forwards(tiny_lm, encoded.n_context) as calls:
        prepared = kvcrush.prepare_encoded(tiny_lm, encoded)
        first = prepared.select(make_policy("snapkv", budget=0.25))
        sharing = [("snapkv", {}), ("pyramidkv", {}), ("kvcrush", {"anchor": "ones"}),
                   ("kvcrush", {"crush_fraction": 0.5})]
        again = [prepared.select(make_policy(name, budget=b, **opts)) for name, opts in sharing for b in (0.1, 0.5, 64)]
        prepared.generate(make_policy("kvcrush", budget=0.3), max_new_tokens=3)
    assert len(calls) == 1 and prepared.prefills == 1
    assert not first.timings.score_reused and all(trace.timings.score_reused for trace in again)
    assert all(trace.timings.prefill_reused for trace in again)
    assert prepared.scorers == [make_policy("snapkv").scorer_key()]
    other_window = make_policy("snapkv", window=8)
    assert other_window.scorer_key() != make_policy("snapkv").scorer_key()
    prepared.select(other_window)
    assert len(prepared.scorers) == 2 and len(calls) == 1  # scored from the kept hidden states


def test_a_scorer_whose_rows_were_not_kept_prefills_once_more_with_the_same_result(tiny_lm, essay_prompt):
    encoded = encode_prompt(tiny_lm.tokenizer, essay_prompt, QUESTION)
    assert encoded.n_context > kvcrush.prepared.TAIL_ROWS
    lean = kvcrush.prepare_encoded(tiny_lm, encoded, hidden_limit=0)
    roomy = kvcrush.prepare_encoded(tiny_lm, encoded)
    assert lean.hidden_rows == kvcrush.prepared.TAIL_ROWS and roomy.hidden_rows == encoded.n_context
    assert lean.nbytes < roomy.nbytes
    with prompt_forwards(tiny_lm, encoded.n_context) as calls:
        snap = lean.select(make_policy("snapkv", budget=0.3))  # its window is within the kept rows
        assert len(calls) == 0
        heavy = lean.select(make_policy("h2o", budget=0.3))  # every query: one more prefill
        lean.select(make_policy("kvcrush", base="h2o", budget=0.5))  # ... and only one
    assert len(calls) == 1 and lean.prefills == 2
    for policy, trace in ((make_policy("snapkv", budget=0.3), snap), (make_policy("h2o", budget=0.3), heavy)):
        reference = roomy.select(policy)
        assert all(torch.equal(a.kept, b.kept) for a, b in zip(trace.layers, reference.layers, strict=True))


def test_select_is_the_selection_that_generate_applies(tiny_lm, essay_prompt):
    prepared = kvcrush.prepare(tiny_lm, essay_prompt, QUESTION)
    policy = make_policy("kvcrush", budget=0.25, base="tova")
    trace = prepared.select(policy)
    result = prepared.generate(policy, max_new_tokens=2)
    assert all(torch.equal(a.kept, b.kept) for a, b in zip(trace.layers, result.trace.layers, strict=True))
    assert trace.timings.decode_s == 0 and result.timings.decode_tokens >= 1
    assert result.kv_bytes_after == sum(layer.kept.numel() for layer in trace.layers) * 2 * tiny_lm.head_dim * 4


def test_query_aware_window_is_the_question_and_the_template_closing_is_appended(tiny_lm, essay_prompt):
    encoded = encode_prompt(tiny_lm.tokenizer, essay_prompt, QUESTION)
    assert encoded.question_ids and encoded.suffix_ids  # the chat template closes the turn after the question
    question_text = tiny_lm.tokenizer.decode(encoded.question_ids)
    assert QUESTION in question_text and "assistant" not in question_text
    prepared = kvcrush.prepare_encoded(tiny_lm, encoded, query_aware=True)
    assert prepared.n_budgeted == encoded.n_context + len(encoded.question_ids)
    assert prepared.appended_ids == encoded.suffix_ids
    policy = make_policy("snapkv", budget=0.3)
    assert policy.observation_window(prepared.layers[0]) == (encoded.n_context, prepared.n_budgeted)
    trace = prepared.select(policy)
    statuses = trace.layers[0].token_status(0)
    n_question = len(encoded.question_ids)
    assert (statuses[-n_question:] == kvcrush.trace.PROTECTED).all()
    assert (statuses[:-n_question] != kvcrush.trace.PROTECTED).all()


@pytest.mark.parametrize("name", ["snapkv", "pyramidkv", "h2o", "tova"])
def test_head_reduction_all_keeps_the_same_tokens_in_every_head(tiny_lm, essay_prompt, name):
    prepared = kvcrush.prepare(tiny_lm, essay_prompt, QUESTION)
    for policy in (make_policy(name, budget=0.3, head_reduction="all"),
                   make_policy("kvcrush", budget=0.3, base=name, head_reduction="all")):
        for layer in prepared.select(policy).layers:
            assert all(torch.equal(layer.kept[0], row) for row in layer.kept)
    if name == "h2o":
        return  # on random weights H2O's sums are dominated by position, so heads already agree when grouped
    grouped = prepared.select(make_policy(name, budget=0.3))
    assert any(not torch.equal(layer.kept[0], layer.kept[1]) for layer in grouped.layers)


def test_cancelled_prepare_leaves_the_model_usable(tiny_lm, essay_prompt):
    with pytest.raises(kvcrush.RunCancelled):
        kvcrush.prepare(tiny_lm, essay_prompt, should_stop=lambda: True)
    prepared = kvcrush.prepare(tiny_lm, essay_prompt)
    with pytest.raises(kvcrush.RunCancelled):
        prepared.generate("snapkv", max_new_tokens=4, should_stop=lambda: True)
    assert prepared.generate("snapkv", max_new_tokens=2).new_token_ids


def test_streamed_tokens_are_the_answer(tiny_lm, essay_prompt):
    prepared = kvcrush.prepare(tiny_lm, essay_prompt, QUESTION)
    streamed = []
    result = prepared.generate("kvcrush", max_new_tokens=5, on_token=lambda ids: streamed.append(list(ids)))
    assert streamed[-1] == result.new_token_ids and [len(s) for s in streamed] == list(range(1, len(streamed) + 1))


@pytest.mark.slow
@pytest.mark.parametrize("query_aware", [False, True], ids=["agnostic", "aware"])
def test_packaged_model_shared_prefill_equals_fresh_runs(packaged_lm, query_aware):
    from kvcrush.data import needle_example

    needle = needle_example(packaged_lm.tokenizer, 700, 0.5, seed=3)
    encoded = encode_prompt(packaged_lm.tokenizer, needle.context, needle.question)
    cases = [("snapkv", {}), ("h2o", {}), ("tova", {}), ("kvcrush", {"base": "snapkv"}),
             ("kvcrush", {"base": "h2o", "granularity": "block", "block_size": 16})]
    with prompt_forwards(packaged_lm, encoded.n_context) as calls:
        prepared = kvcrush.prepare_encoded(packaged_lm, encoded, query_aware=query_aware)
        shared = [prepared.generate(make_policy(n, budget=0.5, **o), max_new_tokens=12) for n, o in cases]
    assert len(calls) == 1
    for (name, options), result in zip(cases, shared, strict=True):
        fresh = kvcrush.generate_encoded(packaged_lm, encoded, make_policy(name, budget=0.5, **options),
                                         max_new_tokens=12, query_aware=query_aware)
        _same_run(result, fresh)


def test_generate_reuses_a_selection_and_refuses_another_policys(tiny_lm, essay_prompt):
    prepared = kvcrush.prepare(tiny_lm, essay_prompt, QUESTION)
    policy = make_policy("kvcrush", budget=0.3)
    trace = prepared.select(policy)
    reused = prepared.generate(policy, max_new_tokens=4, selection=trace)
    again = prepared.generate(policy, max_new_tokens=4)
    assert reused.new_token_ids == again.new_token_ids and reused.kv_bytes_after == again.kv_bytes_after
    assert reused.trace.layers is trace.layers and reused.trace.timings is not trace.timings
    with pytest.raises(ValueError, match="another policy"):
        prepared.generate(make_policy("kvcrush", budget=0.5), max_new_tokens=1, selection=trace)
