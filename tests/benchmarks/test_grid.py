"""The benchmark grid's spec strings, groups and budgets (no model needed)."""

from __future__ import annotations

import pytest

from benchmarks.engines import compression_ratio
from benchmarks.grid import GROUPS, parse_budgets, parse_policies, parse_spec


def test_specs_parse_to_engine_method_and_options():
    spec = parse_spec("kvcrush:h2o:mean", window=16, crush_fraction=0.5)
    assert (spec.label, spec.engine, spec.method, spec.base, spec.anchor) == ("kvcrush:h2o:mean", "ours", "kvcrush",
                                                                               "h2o", "mean")
    assert spec.options == {"crush_fraction": 0.5}
    assert parse_spec("kvcrush").label == "kvcrush:snapkv:alternating"
    assert parse_spec("kvpress:snapkv", window=32).options == {"window_size": 32}
    assert parse_spec("snapkv-avg").options == {"window": 32, "pooling": "avg"}
    assert parse_spec("tova-all").options == {"head_reduction": "all"}
    qa = parse_spec("kvcrush:snapkv:alternating+qa")
    assert qa.query_aware and qa.label.endswith("+qa") and qa.method == "kvcrush"
    policy = parse_spec("kvcrush:snapkv:ones").policy(0.25, seed=3)
    assert policy.anchor == "ones" and policy.base.name == "snapkv" and policy.base.window == 32


@pytest.mark.parametrize("bad", ["nope", "kvpress:nope", "kvcrush:full:mean", "kvcrush:snapkv:x", "kvpress:knorm+qa"])
def test_unknown_specs_are_refused(bad):
    with pytest.raises(ValueError):
        parse_spec(bad)


def test_groups_expand_without_duplicates_and_skip_full():
    specs = parse_policies(["full, snapkv", "baselines", "kvpress"])
    labels = [s.label for s in specs]
    assert labels[0] == "snapkv" and len(labels) == len(set(labels)) == 7 + 7
    assert len(parse_policies(["all"])) == len(GROUPS["all"]) == 28


def test_budgets_accept_fractions_and_percentages():
    assert parse_budgets(["25%", "0.1", "50", "0.25"]) == [0.1, 0.25, 0.5]
    for bad in ("0", "100%", "1.0"):
        with pytest.raises(ValueError):
            parse_budgets([bad])
    assert compression_ratio(0.9) == 0.1 and compression_ratio(0.25) == 0.75
