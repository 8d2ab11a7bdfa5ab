"""KVCrush over a kvpress press (`make_policy("kvcrush", base="kvpress", press=...)`, issue 20).

The press only supplies the scores: KVCrush over a press must select exactly what KVCrush over fixed scores equal to
the press's own scores selects (`GivenScores`), its signatures are over KV heads (a press scores per KV head), and a
press whose scores read the budget is scored at KVCrush's importance part.
"""

from __future__ import annotations

import pytest
import torch

import kvcrush
from kvcrush.errors import PolicyError
from kvcrush.policies import make_policy
from kvcrush.policies.kvcrush import KVCrush
from kvcrush.prompts import EncodedPrompt
from tests.conftest import kvpress_or_skip
from tests.policies.helpers import GivenScores

kvpress = kvpress_or_skip()

from kvcrush.policies.press import KVPressPolicy  # noqa: E402

N_TOKENS = 300


@pytest.fixture(scope="module")
def prepared(tiny_lm):
    ids = torch.randint(0, 8000, (N_TOKENS,), generator=torch.Generator().manual_seed(7)).tolist()
    return kvcrush.prepare_encoded(tiny_lm, EncodedPrompt(ids, []))


def given_scores_selection(prepared, scores, budget, **options):
    """KVCrush over `GivenScores` equal to each layer's `scores`, selected layer by layer."""
    traces = []
    for layer, layer_scores in zip(prepared.layers, scores, strict=True):
        policy = KVCrush(budget=budget, base=GivenScores(budget=budget, scores=layer_scores), **options)
        traces.append(policy.select(layer_scores, layer))
    return traces


def assert_same_selection(ours, reference):
    assert len(ours) == len(reference)
    for a, b in zip(ours, reference, strict=True):
        assert torch.equal(a.kept, b.kept), f"layer {a.layer}"
        assert torch.equal(a.representatives, b.representatives), f"layer {a.layer}"
        assert torch.equal(a.candidates, b.candidates), f"layer {a.layer}"
        assert torch.equal(a.signatures, b.signatures), f"layer {a.layer}"
        assert torch.equal(a.distances, b.distances), f"layer {a.layer}"


@pytest.mark.parametrize("press, options", [
    ("ExpectedAttentionPress", {}),
    ("SnapKVPress", {"window_size": 16, "crush_fraction": 0.5, "anchor": "mean"}),
    ("KnormPress", {"granularity": "block", "block_size": 8}),
])
def test_kvcrush_over_a_press_equals_kvcrush_over_its_fixed_scores(tiny_lm, prepared, press, options):
    budget = 120
    crush_options = {k: v for k, v in options.items() if k != "window_size"}
    press_options = {k: v for k, v in options.items() if k == "window_size"}
    policy = make_policy("kvcrush", base="kvpress", press=press, budget=budget, **options)
    assert isinstance(policy.base, KVPressPolicy) and policy.base.press.__class__.__name__ == press
    scores, _ = prepared.scores(make_policy("kvpress", press=press, budget=budget, **press_options))
    assert all(s.shape == (tiny_lm.kv_heads, N_TOKENS) for s in scores)  # one row per KV head
    trace = prepared.select(policy)
    assert prepared.prefills == 1 and len(prepared.scorers) >= 1
    assert_same_selection(trace.layers, given_scores_selection(prepared, scores, budget, **crush_options))
    for layer in trace.layers:
        assert layer.kept.shape[0] == tiny_lm.kv_heads and budget - 8 < layer.kept.shape[1] <= budget  # blocks of 8
        if layer.granularity == "token":
            assert layer.kept.shape[1] == budget
            # signatures over KV heads whatever signature_heads says (the press scores per KV head)
            assert layer.signatures.shape == (N_TOKENS, tiny_lm.kv_heads)
    assert trace.policy["base"]["press"].startswith(press)


def test_budget_aware_press_is_scored_at_kvcrush_importance_part(prepared):
    budget, fraction = 100, 0.25  # T_crush = 25: StreamingLLMPress is scored as if it kept 75 tokens
    policy = make_policy("kvcrush", base="kvpress", press="StreamingLLMPress", budget=budget, crush_fraction=fraction)
    assert policy.base.crush_share == fraction
    trace = prepared.select(policy)
    window = list(range(4)) + list(range(N_TOKENS - 71, N_TOKENS))  # n_sink=4 and the most recent 71
    for layer in trace.layers:
        assert layer.crush_used == 25
        for head in layer.kept:
            assert set(window) <= set(head.tolist())
        assert set(layer.representatives.tolist()).isdisjoint(window)
    alone, _ = prepared.scores(make_policy("kvpress", press="StreamingLLMPress", budget=75))
    assert_same_selection(trace.layers, given_scores_selection(prepared, alone, budget, crush_fraction=fraction))
    # Another split or budget scores again; a budget-blind press's scores are shared by every budget and split.
    keys = {make_policy("kvcrush", base="kvpress", press="StreamingLLMPress", budget=b, crush_fraction=f).scorer_key()
            for b, f in ((100, 0.25), (100, 0.5), (150, 0.25))}
    assert len(keys) == 3
    blind = {make_policy("kvcrush", base="kvpress", press="KnormPress", budget=b, crush_fraction=f).scorer_key()
             for b, f in ((100, 0.25), (100, 0.5), (150, 0.25))}
    assert blind == {make_policy("kvpress", press="KnormPress").scorer_key()}


def test_base_as_policy_instance_or_press_instance_or_class(prepared):
    by_name = make_policy("kvcrush", base="kvpress", press="SnapKVPress", window_size=16, budget=90)
    instance = make_policy("kvpress", press="SnapKVPress", window_size=16, budget=0.5)
    from_policy = make_policy("kvcrush", base=instance, budget=90)
    assert instance.budget == 0.5 and from_policy.base is not instance  # the caller's policy is not changed
    from_press = make_policy("kvcrush", base=kvpress.SnapKVPress(window_size=16), budget=90)
    from_class = make_policy("kvcrush", base=kvpress.SnapKVPress, window_size=16, budget=90)
    reference = prepared.select(by_name)
    for policy in (from_policy, from_press, from_class):
        assert policy.scorer_key() == by_name.scorer_key()
        assert all(torch.equal(a.kept, b.kept) for a, b in zip(prepared.select(policy).layers, reference.layers,
                                                                 strict=True))
    baseline = make_policy("kvcrush", base=make_policy("knorm", budget=0.9), budget=90)
    assert baseline.base.budget == 90 and baseline.base.name == "knorm"


@pytest.mark.parametrize("options, match", [
    ({"base": "kvpress"}, "needs a press"),
    ({"base": "kvpress", "press": "KnormPress", "decode_interval": 8}, "does not evict while decoding"),
    ({"base": "kvpress", "press": "ThinKPress"}, "prunes key channels"),
    ({"base": 3}, "Unknown base policy"),
    ({"base": "nope"}, "kvpress"),
    ({"base": kvpress.KnormPress(), "n_sink": 2}, "set them on the KnormPress instance"),
])
def test_bad_press_bases_are_refused(options, match):
    with pytest.raises(PolicyError, match=match):
        make_policy("kvcrush", **options)
    with pytest.raises(PolicyError, match="set them on the kvpress instance"):
        make_policy("kvcrush", base=make_policy("kvpress", press="KnormPress"), window_size=8)


def test_kvcrush_over_a_press_generates_on_a_tiny_model(tiny_lm):
    prepared = kvcrush.prepare(tiny_lm, "The quick brown fox jumps over the lazy dog. " * 30, "What jumps?",
                               query_aware=True)
    policy = make_policy("kvcrush", base="kvpress", press="ExpectedAttentionPress", budget=0.4)
    result = prepared.generate(policy, max_new_tokens=3)
    assert len(result.new_token_ids) == 3
    layer = result.trace.layers[0]
    assert layer.representatives.numel() > 0 and layer.kept.shape[0] == tiny_lm.kv_heads
    assert result.kv_bytes_after < result.kv_bytes_before


def test_runnable_presses_are_the_supported_scorers_and_all_build():
    from kvcrush.policies.press import SUPPORTED, press_table, runnable_presses

    names = runnable_presses()
    assert {n.split("(")[0] for n in names} == {n for n, row in press_table().items() if row.status == SUPPORTED}
    for name in names:
        assert isinstance(make_policy("kvcrush", base="kvpress", press=name).base, KVPressPolicy), name
