"""The benchmark grid's spec strings, groups and budgets (no model needed)."""

from __future__ import annotations

import pytest

import kvcrush
from benchmarks.engines import compression_ratio
from benchmarks.grid import (
    GROUPS,
    HEAD_REDUCTION_POLICIES,
    OUR_BASELINES,
    QUICK_POLICIES,
    STANDARD_POLICIES,
    base_label,
    paper_label,
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
    assert len(parse_policies(["all"])) == len(GROUPS["all"]) == (37 + len(GROUPS["storage"]) + len(GROUPS["variants"])
                                                                 + 2 * len(GROUPS["presses"]))
    assert {s.label for s in parse_policies(["variants"])} & set(STANDARD_POLICIES) == set()  # --full only


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


def test_storage_suffixes_set_bits_and_byte_budgets():
    tokens, same_bytes = parse_spec("snapkv~4"), parse_spec("snapkv~4b")
    assert (tokens.label, tokens.kv_bits, tokens.equal_bytes) == ("snapkv~4", 4, False)
    assert (same_bytes.label, same_bytes.kv_bits, same_bytes.equal_bytes) == ("snapkv~4b", 4, True)
    assert tokens.representative_bits is None  # not KVCrush
    policy = tokens.policy(0.25, 0)
    assert (policy.kv_bits, policy.budget_bytes, policy.budget) == (4, None, 0.25)
    with pytest.raises(ValueError, match="budget_bytes"):  # a byte budget depends on the prompt
        same_bytes.policy(0.25, 0)
    assert same_bytes.policy(0.25, 0, budget_bytes=7680).budget_bytes == 7680
    assert parse_spec("snapkv").policy(0.25, 0).kv_bits == 16
    assert parse_spec("snapkv~16").label == "snapkv"  # the default needs no suffix
    assert parse_spec("snapkv~16b").label == "snapkv~16b" and parse_spec("snapkv~16b").equal_bytes


def test_kvcrush_keeps_its_storage_for_its_base_and_takes_representative_bits():
    crush = parse_spec("kvcrush:snapkv:alternating:rep4~8b")
    assert (crush.kv_bits, crush.equal_bytes, crush.representative_bits) == (8, True, 4)
    assert crush.base_label == base_label(crush.label) == "snapkv~8b"  # compared with its base in the same bytes
    assert paper_label(crush.label) == "kvcrush:snapkv:alternating~8b"
    policy = crush.policy(0.25, 0, budget_bytes=1000)
    assert (policy.kv_bits, policy.representative_bits, policy.budget_bytes) == (8, 4, 1000)
    assert parse_spec("kvcrush:snapkv:alternating~4").representative_bits == 4  # kv_bits without repN
    every = parse_spec("kvcrush:h2o:mean@all~4b+qa")
    assert (every.label, every.base_label, every.query_aware) == ("kvcrush:h2o:mean@all~4b+qa", "h2o@all~4b+qa", True)
    assert every.policy(0.25, 0, budget_bytes=500).base.head_reduction == "all"
    assert paper_label("kvcrush:snapkv:alternating:best+rep2@all~4b+qa") == "kvcrush:snapkv:alternating@all~4b+qa"
    assert paper_label("kvcrush:snapkv:alternating~4b") is None


@pytest.mark.parametrize("bad", ["kvpress:snapkv~4", "kvpress:kvcrush~4b", "snapkv~3", "snapkv~", "snapkv~b",
                                 "snapkv~4@all", "snapkv+qa~4", "snapkv~4bb", "kvcrush:snapkv:alternating:rep3",
                                 "kvcrush:snapkv:alternating:rep4~4", "kvcrush:snapkv:alternating:rep16"])
def test_bad_storage_specs_are_refused(bad):
    with pytest.raises(ValueError):
        parse_spec(bad)


def test_kvpress_refuses_storage_with_a_clear_reason():
    with pytest.raises(ValueError, match="kvpress presses keep the model's dtype"):
        parse_spec("kvpress:snapkv~4b")
    with pytest.raises(ValueError, match="after @REDUCTION and before \\+qa"):
        parse_spec("snapkv~4@all")


def test_every_label_round_trips_and_is_unique():
    extra = ["snapkv@all~8+qa", "kvcrush:h2o:mean@all~4b+qa", "kvcrush:snapkv:alternating:best+rep2~4", "tova@all~4"]
    specs = parse_policies(["all", *extra])
    labels = [spec.label for spec in specs]
    assert len(labels) == len(set(labels))
    for spec in specs:
        again = parse_spec(spec.label)
        assert (again.label, again.kv_bits, again.equal_bytes, again.options) == (spec.label, spec.kv_bits,
                                                                                   spec.equal_bytes, spec.options)
        assert base_label(spec.label) == (spec.base_label or None)
    assert "tova@all~4" in labels


def test_storage_group_holds_every_base_and_paper_run_it_compares_with():
    labels = set(GROUPS["storage"])
    assert {"snapkv~4", "snapkv~4b", "snapkv~8", "snapkv~8b", "snapkv~16b", "kvcrush:snapkv:alternating:rep4~8b",
            "kvcrush:h2o:alternating~4b"} <= labels
    for spec in parse_policies(["storage"]):
        assert spec.kv_bits in (16, 8, 4)
        if spec.is_kvcrush:
            assert spec.base_label in labels, spec.label
            assert paper_label(spec.label) in (None, *labels), spec.label
    quick = {s.label for s in parse_policies(list(QUICK_POLICIES))}
    assert {"snapkv~4", "snapkv~4b", "kvcrush:snapkv:alternating~4"} <= quick


def test_press_specs_run_a_kvpress_scorer_on_our_engine():
    from kvcrush.policies.press import runnable_presses

    spec = parse_spec("press:ExpectedAttentionPress")
    assert (spec.label, spec.engine, spec.method, spec.options) == (
        "press:expectedattentionpress", "ours", "kvpress", {"press": "ExpectedAttentionPress"})
    assert parse_spec("press:SnapKVPress", window=16).options == {"press": "SnapKVPress", "window_size": 16}
    crush = parse_spec("kvcrush:press:ExpectedAttentionPress", crush_fraction=0.5)
    assert (crush.label, crush.method, crush.base, crush.base_label) == (
        "kvcrush:press:expectedattentionpress:alternating", "kvcrush", "kvpress", "press:expectedattentionpress")
    assert crush.options == {"crush_fraction": 0.5, "press": "ExpectedAttentionPress"}
    variant = parse_spec("kvcrush:press:criticalkvpress(snapkvpress):mean:best~4+qa")
    assert base_label(variant.label) == variant.base_label == "press:criticalkvpress(snapkvpress)~4+qa"
    assert paper_label(variant.label) == "kvcrush:press:criticalkvpress(snapkvpress):mean~4+qa"
    assert [parse_spec(s).options["press"] for s in GROUPS["presses"]] == list(runnable_presses())
    assert {parse_spec(s).base_label for s in GROUPS["kvcrush-presses"]} == set(GROUPS["presses"])
    assert not set(GROUPS["presses"]) & set(STANDARD_POLICIES)  # --full only until their cost is measured
    for bad in ("press:nope", "press:qfilterpress", "kvcrush:press:nope", "press:knormpress@all",
                "kvcrush:press:knormpress:alternating@all"):
        with pytest.raises(ValueError):
            parse_spec(bad)


def test_press_specs_build_policies():
    from tests.conftest import kvpress_or_skip

    kvpress_or_skip()
    policy = parse_spec("press:ExpectedAttentionPress").policy(0.25, seed=0)
    assert policy.name == "kvpress" and type(policy.press).__name__ == "ExpectedAttentionPress"
    crush = parse_spec("kvcrush:press:streamingllmpress:mean~4").policy(0.25, seed=0)
    assert crush.base.name == "kvpress" and crush.base.crush_share == 0.25 and crush.base.kv_bits == 4


def test_one_registry_of_kvpress_engine_presses_and_the_readme_table_is_current():
    from pathlib import Path

    from tests.conftest import kvpress_or_skip

    kvpress_or_skip()
    from benchmarks.grid import KVPRESS_ENGINE_PRESSES, KVPRESS_NAMES, press_table_md
    from benchmarks.kvpress_runner import KVPRESS_PRESSES, make_press

    assert tuple(KVPRESS_PRESSES) == KVPRESS_NAMES == tuple(KVPRESS_ENGINE_PRESSES)
    for name, label in KVPRESS_ENGINE_PRESSES.items():
        press = make_press(name, 0.5)
        assert type(press).__name__ == label.split("(")[0], name
    readme = (Path(__file__).resolve().parents[2] / "benchmarks" / "README.md").read_text()
    table = readme.split("<!-- press-table:begin -->\n", 1)[1].split("\n<!-- press-table:end -->", 1)[0]
    assert table == press_table_md(), "regenerate the README's press table: benchmarks.grid.press_table_md()"
