"""Every explanation against the recorded selection over a seeded sample of the whole KVCrush option space.

`conftest.CASES` names the cases people ask about; this samples combinations nobody picked by hand (token and
block level x one, several or k-means anchors x spaced or best representatives x merge x fixed or adaptive split x
storage precisions and budgets in bytes x bases x signature heads x sink), so that a decision the explainer
re-derived instead of reading would show up as a disagreement somewhere.
"""

from __future__ import annotations

import random

import pytest

import kvcrush
from kvcrush.errors import BudgetError
from tests.explain.checks import check_span, check_units, check_walk, check_why

OPTION_SPACE = {
    "granularity": [("token", {}), ("block", {"block_size": 4}), ("block", {"block_size": 8})],
    "anchors": [(1, {}), (2, {}), (3, {"anchor_mode": "kmeans"}), (4, {"anchor_mode": "kmeans"})],
    "anchor": ["alternating", "mean", "zeros", "ones", "random"],
    "representative": ["spaced", "best"],
    "merge": ["none", "values"],
    "split": ["fixed", "adaptive"],
    "crush_fraction": [0.1, 0.25, 0.5, 0.8],
    "storage": [{}, {"kv_bits": 8}, {"kv_bits": 8, "representative_bits": 2},
                {"kv_bits": 8, "representative_bits": 2, "budget_bytes": 16000},
                {"kv_bits": 4, "representative_bits": 2, "budget_bytes": 9000}],
    "base": [("snapkv", {}), ("h2o", {}), ("tova", {"head_reduction": "all"}), ("knorm", {}), ("pyramidkv", {})],
    "signature_heads": ["query", "kv"],
    "sink": [0, 4],
}
N_COMBINATIONS = 24


def _combinations(count: int, seed: int = 2026) -> list[tuple[float, dict]]:
    draw = random.Random(seed)
    combos = []
    for _ in range(count):
        granularity, block = draw.choice(OPTION_SPACE["granularity"])
        anchors, anchor_extra = draw.choice(OPTION_SPACE["anchors"])
        base, base_extra = draw.choice(OPTION_SPACE["base"])
        options = {"granularity": granularity, **block, "anchors": anchors, **anchor_extra, "base": base, **base_extra,
                   **draw.choice(OPTION_SPACE["storage"])}
        for name in ("anchor", "representative", "merge", "split", "crush_fraction", "signature_heads", "sink"):
            options[name] = draw.choice(OPTION_SPACE[name])
        combos.append((draw.choice([0.2, 0.3, 0.5]), options))
    return combos


COMBINATIONS = _combinations(N_COMBINATIONS)


@pytest.fixture(scope="module")
def prepared_prompt(tiny_lm, essay_prompt):
    return kvcrush.prepare(tiny_lm, essay_prompt[:2500], question="Who wrote this essay?", query_aware=False)


@pytest.mark.parametrize(("budget", "options"), COMBINATIONS,
                         ids=["-".join(f"{k}={v}" for k, v in o.items()) for _, o in COMBINATIONS])
def test_explanations_equal_the_recorded_selection(prepared_prompt, budget, options):
    try:
        trace = prepared_prompt.select(kvcrush.make_policy("kvcrush", budget, **options))
    except BudgetError as error:  # e.g. a budget in bytes too small for whole blocks: refused, with the numbers
        assert "budget" in str(error).lower()
        pytest.skip(f"refused: {error}")
    n = trace.n_context
    evicting = [check_units(layer) for layer in trace.layers]
    assert any(evicting)
    for position in (0, 5, n // 3, n // 2, n - 30, n - 1):
        check_why(trace, position)
    for start, end in ((0, 6), (n // 2, n // 2 + 9), (n - 5, n)):
        check_span(trace, start, end)
    for index in range(len(trace.layers)):
        for head in range(trace.layers[index].kept.shape[0]):
            check_walk(trace, index, head)


def test_the_sample_covers_every_value_of_every_option():
    seen = {name: set() for name in ("granularity", "anchors", "anchor_mode", "representative", "merge", "split",
                                     "base", "budget_bytes", "representative_bits")}
    for _, options in COMBINATIONS:
        for name in seen:
            seen[name].add(options.get(name))
    assert seen["granularity"] == {"token", "block"} and seen["anchors"] >= {1, 2, 3, 4}
    assert seen["representative"] == {"spaced", "best"} and seen["merge"] == {"none", "values"}
    assert seen["split"] == {"fixed", "adaptive"} and len(seen["base"]) == 5
    assert {None, 16000, 9000} <= seen["budget_bytes"] and 2 in seen["representative_bits"]
