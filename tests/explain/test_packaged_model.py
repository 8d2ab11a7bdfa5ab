"""The explanations on the packaged SmolLM2: the built-in ~1k-token needle, query-aware, real selections."""

from __future__ import annotations

import pytest

import kvcrush
from kvcrush import explain
from kvcrush.data import builtin_examples
from tests.explain.checks import check_span, check_units, check_walk, check_why

CASES = [("kvcrush", {}), ("kvcrush", {"granularity": "block", "block_size": 16}),
         ("kvcrush", {"anchors": 3, "anchor_mode": "kmeans"}), ("snapkv", {})]


@pytest.fixture(scope="module")
def needle(packaged_lm):
    example = builtin_examples(packaged_lm.tokenizer)["Needle in essays (~1k tokens)"]
    prepared = kvcrush.prepare(packaged_lm, example.context, question=example.question, query_aware=True)
    span = explain.answer_spans(prepared.token_strings()[: prepared.n_budgeted], example.answers)[0]
    return prepared, span


@pytest.mark.slow
@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}-{o}" for n, o in CASES])
def test_explanations_agree_with_the_packaged_models_selection(needle, name, options):
    prepared, span = needle
    trace = prepared.select(kvcrush.make_policy(name, 0.25, **options))
    assert all(check_units(layer) for layer in trace.layers)
    check_span(trace, span.start, span.end)
    for position in (span.start, span.start + 3, span.end - 1, 40):
        check_why(trace, position)
    for layer in (0, 14, 29):
        check_walk(trace, layer, 1)
