"""KVCrush selection against the spec: an independent reference, candidates, representatives, blocks."""

import pytest
import torch

from kvcrush import crush
from kvcrush.errors import BudgetError, PolicyError
from kvcrush.policies import make_policy
from kvcrush.policies.kvcrush import KVCrush
from tests.conftest import synthetic_layer
from tests.policies.helpers import GivenScores, random_scores, reference_kvcrush


def crushed(scores, budget, sink=0, recent=0, **options) -> KVCrush:
    return KVCrush(budget=budget, base=GivenScores(budget=budget, sink=sink, recent=recent, scores=scores), **options)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("budget,sink,recent,fraction", [(12, 0, 0, 0.25), (20, 2, 4, 0.5), (9, 1, 1, 1.0)])
@pytest.mark.parametrize("ties", [False, True])
def test_token_level_matches_the_reference(seed, budget, sink, recent, fraction, ties):
    n, kv_heads, query_heads = 48, 2, 4
    head_scores = random_scores(query_heads, n, seed, ties)
    kv_scores = head_scores.reshape(kv_heads, 2, n).mean(dim=1)
    policy = crushed(head_scores, budget, sink, recent, crush_fraction=fraction, anchor="alternating")
    trace = policy.compress(synthetic_layer(n, kv_heads, query_heads))
    anchor_bits = [h % 2 for h in range(query_heads)]
    # the reference ranks middle tokens within the middle; feed it the same middle-local view
    expected_kept, expected_picks = reference_kvcrush(
        kv_scores.tolist(), head_scores.tolist(), budget, sink, recent, fraction, anchor_bits
    )
    assert trace.kept.tolist() == expected_kept
    assert trace.representatives.tolist() == expected_picks


def test_representatives_come_from_the_evicted_set_and_join_every_head():
    n = 64
    scores = random_scores(4, n, seed=11)
    trace = crushed(scores, budget=16, recent=4, crush_fraction=0.25).compress(synthetic_layer(n))
    base_only = GivenScores(budget=16, recent=4, scores=scores)
    kv_scores = base_only.kv_scores(scores, synthetic_layer(n))[:, : n - 4]
    base_kept = crush.stable_top_indices(kv_scores, trace.importance)
    evicted = set(range(n - 4)) - set(base_kept.flatten().tolist())
    assert set(trace.candidates.tolist()) == evicted
    assert trace.representatives.numel() == trace.crush == 3
    assert set(trace.representatives.tolist()) <= evicted
    for row in trace.kept.tolist():
        assert set(trace.representatives.tolist()) <= set(row)
    bucketed = sorted(t for bucket in trace.buckets for t in bucket.tolist())
    assert bucketed == sorted(evicted)


def test_unused_crush_budget_returns_to_importance():
    # identical heads: importance keeps T_imp tokens, so |F| = M - T_imp; budget nearly N leaves |F| < T_crush
    n = 20
    scores = torch.arange(n, dtype=torch.float32).expand(4, n).clone()
    trace = crushed(scores, budget=18, crush_fraction=1.0).compress(synthetic_layer(n))
    assert trace.crush == 18 and trace.crush_used == trace.representatives.numel() <= 20
    assert trace.kept.shape == (2, 18)


def test_signatures_anchor_and_distances_are_recorded():
    n = 40
    trace = crushed(random_scores(4, n, seed=5), budget=12, anchor="mean").compress(synthetic_layer(n))
    assert trace.signatures.shape == (n, 4) and trace.signatures.dtype == torch.bool
    assert trace.signatures.sum(dim=0).tolist() == [n // 2] * 4
    assert torch.equal(trace.anchor, crush.anchor(trace.signatures, "mean"))
    assert torch.equal(trace.distances, crush.hamming(trace.signatures, trace.anchor))


def test_kv_signature_heads_use_kv_scores():
    n = 30
    trace = crushed(random_scores(4, n, seed=6), budget=10, signature_heads="kv").compress(synthetic_layer(n))
    assert trace.signatures.shape == (n, 2)


@pytest.mark.parametrize("block_size", [1, 2, 4, 7])
def test_block_level_keeps_whole_blocks_and_same_count_per_head(block_size):
    n, budget = 70, 30
    trace = crushed(random_scores(4, n, seed=7), budget=budget, recent=3, granularity="block",
                    block_size=block_size).compress(synthetic_layer(n))
    count = trace.kept.shape[1]
    assert budget - block_size < count <= budget
    middle = set(range(trace.middle_start, trace.middle_end))
    starts = {int(s) for s in trace.blocks[:, 0]}
    for row in trace.kept.tolist():
        kept_middle = sorted(set(row) & middle)
        for position in kept_middle:  # every kept middle token sits in a fully kept block
            start = trace.middle_start + ((position - trace.middle_start) // block_size) * block_size
            assert start in starts
            assert set(range(start, start + block_size)) <= set(row)
    assert set(trace.representative_tokens().tolist()) <= set(trace.kept[0].tolist())
    assert trace.anchor.shape == (block_size * 4,)


def test_block_level_too_small_budget_is_a_clear_error():
    with pytest.raises(BudgetError, match="too small for blocks"):
        crushed(random_scores(4, 50, seed=8), budget=5, recent=4, granularity="block",
                block_size=16).compress(synthetic_layer(50))


@pytest.mark.parametrize("options,error", [
    ({"crush_fraction": 1.5}, BudgetError), ({"crush_fraction": -0.1}, BudgetError),
    ({"anchor": "median"}, PolicyError), ({"granularity": "page"}, PolicyError),
    ({"block_size": 0}, BudgetError), ({"signature_heads": "values"}, PolicyError),
    ({"base": "full"}, PolicyError), ({"base": "nope"}, PolicyError),
])
def test_bad_options_are_refused(options, error):
    with pytest.raises(error):
        make_policy("kvcrush", budget=0.25, **options)


def test_make_policy_routes_options_to_base_and_crush():
    policy = make_policy("kvcrush", budget="25%", base="snapkv", window=16, crush_fraction=0.5, anchor="ones")
    assert policy.base.name == "snapkv" and policy.base.window == 16 and policy.base.budget == 0.25
    assert policy.crush_fraction == 0.5 and policy.anchor == "ones"
    with pytest.raises(PolicyError, match="does not take"):
        make_policy("snapkv", budget=0.5, anchor="ones")
