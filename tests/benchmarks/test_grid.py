"""The benchmark grid's spec strings, groups and budgets (no model needed)."""

from __future__ import annotations

import pytest

import kvcrush
from benchmarks.engines import compression_ratio
from benchmarks.grid import (
    GROUPS,
    HEAD_REDUCTION_POLICIES,
    OUR_BASELINES,
    base_label,
    parse_budgets,
    parse_policies,
    parse_spec,
)


def test_specs_parse_to_engine_method_and_options():
    spec = parse_spec("kvcrush:h2o:mean", window=16, crush_fraction=0.5)
    assert (spec.label, spec.engine, spec.method, spec.base, spec.anchor) == ("kvcrush:h2o:mean", "ours", "kvcrush",
                                                                               "h2o", "mean")
    assert spec.options == {"crush_fraction": 0.5}
    assert parse_spec("kvcrush").label == "kvcrush:snapkv:alternating"
    assert parse_spec("kvpress:snapkv", window=32).options == {"window_size": 32}
    assert parse_spec("snapkv-avg").options == {"window": 32, "pooling": "avg"}
    assert parse_spec("tova-all").options == {"head_reduction": "all"} and parse_spec("tova-all").label == "tova@all"
    qa = parse_spec("kvcrush:snapkv:alternating+qa")
    assert qa.query_aware and qa.label.endswith("+qa") and qa.method == "kvcrush"
    policy = parse_spec("kvcrush:snapkv:ones").policy(0.25, seed=3)
    assert policy.anchor == "ones" and policy.base.name == "snapkv" and policy.base.window == 32


@pytest.mark.parametrize("bad", ["nope", "kvpress:nope", "kvcrush:full:mean", "kvcrush:snapkv:x",
                                 "kvcrush:snapkv:mean:nope", "kvpress:snapkv@all", "knorm@all",
                                 "kvcrush:knorm:mean@all", "snapkv@bogus"])
def test_unknown_specs_are_refused(bad):
    with pytest.raises(ValueError):
        parse_spec(bad)


def test_groups_expand_without_duplicates_and_skip_full():
    specs = parse_policies(["full, snapkv", "baselines", "kvpress"])
    labels = [s.label for s in specs]
    assert labels[0] == "snapkv" and len(labels) == len(set(labels)) == 8 + 9
    assert "kvpress:kvcrush" in labels  # our KVCrushPress, run by kvpress
    assert len(parse_policies(["all"])) == len(GROUPS["all"]) == 37


def test_policy_names_come_from_the_declarations():
    assert set(OUR_BASELINES) == set(kvcrush.BASE_CHOICES) == set(kvcrush.POLICIES) - {"full", "kvcrush"}
    declaring = {name for name, cls in kvcrush.POLICIES.items()
                 if any(o.name == "head_reduction" for o in kvcrush.declared_options(cls))}
    assert set(HEAD_REDUCTION_POLICIES) == declaring == {"h2o", "snapkv", "pyramidkv", "tova"}
    assert parse_spec("pyramidkv").options == {"window": 32}  # declares a window
    assert parse_spec("tova").options == {}


def test_head_reduction_variants_measure_group_and_all():
    group, every = parse_spec("snapkv"), parse_spec("snapkv@all")
    assert group.policy(0.25, 0).head_reduction == "group" and every.policy(0.25, 0).head_reduction == "all"
    assert parse_spec("snapkv@group").label == "snapkv"  # the default needs no suffix
    crush = parse_spec("kvcrush:h2o:mean@all+qa")
    assert (crush.label, crush.base_label, crush.query_aware) == ("kvcrush:h2o:mean@all+qa", "h2o@all+qa", True)
    policy = crush.policy(0.25, 0)
    assert policy.base.head_reduction == "all" and policy.base.name == "h2o"
    assert parse_spec("kvcrush:snapkv:alternating").base_label == "snapkv"
    for label in ("kvcrush:snapkv:alternating", "kvcrush:h2o:mean@all+qa", "kvcrush:tova:ones+qa"):
        assert base_label(label) == parse_spec(label).base_label
    assert base_label("snapkv") is None
    labels = {s.label for s in parse_policies(["head-reduction"])}
    assert {"h2o@all", "snapkv@all", "pyramidkv@all", "tova@all", "kvcrush:snapkv:alternating@all"} <= labels


def test_budgets_accept_fractions_and_percentages():
    assert parse_budgets(["25%", "0.1", "50", "0.25"]) == [0.1, 0.25, 0.5]
    for bad in ("0", "100%", "1.0"):
        with pytest.raises(ValueError):
            parse_budgets([bad])
    assert compression_ratio(0.9) == 0.1 and compression_ratio(0.25) == 0.75
