"""KVCrush beyond the paper (spec section 7): best representatives, adaptive split, several anchors, merging.

Hand-checkable cases against the spec's definitions, properties every variant keeps (exactly T rows per
head, representatives from the candidates), defaults that select exactly what the paper's KVCrush does,
and every variant end to end on the tiny random model.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import kvcrush
from kvcrush import crush
from kvcrush.errors import PolicyError
from kvcrush.kvcache import compressed_copy, gather_rows, merge_values
from kvcrush.policies import make_policy
from kvcrush.policies.kvcrush import KVCrush
from tests.conftest import synthetic_layer
from tests.policies.helpers import GivenScores, random_scores

TEXT = "The quick brown fox jumps over the lazy dog while the cat sleeps by the warm fire. " * 12
VARIANT_OPTIONS = [
    {"representative": "best"},
    {"split": "adaptive"},
    {"anchors": 3},
    {"anchors": 4, "anchor_mode": "kmeans"},
    {"merge": "values"},
    {"anchors": 8, "anchor": "mean"},
    {"representative": "best", "split": "adaptive", "anchors": 3, "anchor_mode": "kmeans", "merge": "values"},
]


def crushed(scores, budget, sink=0, recent=0, **options) -> KVCrush:
    return KVCrush(budget=budget, base=GivenScores(budget=budget, sink=sink, recent=recent, scores=scores), **options)


@pytest.fixture(scope="module")
def prepared(tiny_lm):
    return kvcrush.prepare(tiny_lm, TEXT)


def _combinations() -> list[dict]:
    """Every per-layer option combination (the adaptive split needs all layers: see the prepared tests)."""
    keys = ("representative", "anchors", "anchor_mode", "merge", "granularity")
    values = (("spaced", "best"), (1, 3), ("fixed", "kmeans"), ("none", "values"), ("token", "block"))
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]


# --- defaults are the paper ------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("granularity", ["token", "block"])
def test_defaults_select_exactly_what_the_paper_does(seed, granularity):
    n = 64
    scores = random_scores(4, n, seed, ties=seed % 2 == 1)
    layer = synthetic_layer(n)
    plain = crushed(scores, 24, recent=3, granularity=granularity, block_size=4).compress(layer)
    explicit = crushed(scores, 24, recent=3, granularity=granularity, block_size=4, representative="spaced",
                       split="fixed", anchors=1, anchor_mode="fixed", merge="none").compress(layer)
    for name in ("kept", "representatives", "candidates", "distances", "anchor", "signatures"):
        assert torch.equal(getattr(plain, name), getattr(explicit, name)), name
    # what the single-anchor code computed before the variants existed
    bits = plain.signatures if granularity == "token" else crush.block_signatures(plain.signatures, 4)
    anchor_bits = crush.anchor(bits, "alternating")
    assert torch.equal(plain.anchor, anchor_bits) and plain.anchors.shape == (1, bits.shape[1])
    assert torch.equal(plain.distances, crush.hamming(bits, anchor_bits))
    offset = plain.middle_start if granularity == "token" else 0
    picks, groups = crush.group(plain.distances, plain.candidates - offset,
                                plain.crush_used // (1 if granularity == "token" else 4))
    assert (picks + offset).tolist() == plain.representatives.tolist()
    assert [g.tolist() for g in plain.buckets] == [(g + offset).tolist() for g in groups]
    assert plain.merge_weights == [] and plain.unit_anchor.eq(0).all() and plain.crush_fraction == 0.25


def test_defaults_generate_a_plain_gather_of_the_full_cache(prepared):
    policy = make_policy("kvcrush", 0.3)
    trace = prepared.select(policy)
    assert all(layer.merge_rows() is None for layer in trace.layers)
    cache = compressed_copy(prepared.cache, [layer.kept for layer in trace.layers], prepared.lm.model.config,
                            [layer.merge_rows() for layer in trace.layers])
    for full, compressed, layer in zip(prepared.cache.layers, cache.layers, trace.layers, strict=True):
        assert torch.equal(compressed.values, gather_rows(full.values, layer.kept))


# --- properties of every variant -----------------------------------------------------------------

@pytest.mark.parametrize("options", _combinations(), ids=lambda o: "-".join(str(v) for v in o.values()))
def test_every_combination_keeps_t_rows_and_picks_candidates(options):
    n, budget = 80, 28
    trace = crushed(random_scores(4, n, seed=3), budget, sink=1, recent=3, block_size=4, crush_fraction=0.4,
                    **options).compress(synthetic_layer(n))
    block = options["granularity"] == "block"
    assert trace.kept.shape[0] == 2
    if block:
        assert budget - 4 < trace.kept.shape[1] <= budget
    else:
        assert trace.kept.shape[1] == budget
    for row in trace.kept:
        assert row.unique().numel() == row.numel()
    candidates = set(trace.candidates.tolist())
    assert set(trace.representatives.tolist()) <= candidates
    assert trace.representatives.numel() == len(trace.buckets) == len(trace.bucket_anchor)
    members = [t for bucket in trace.buckets for t in bucket.tolist()]
    assert len(members) == len(set(members)) and set(members) <= candidates
    for rep, bucket in zip(trace.representatives.tolist(), trace.buckets, strict=True):
        assert rep in bucket.tolist()
    for row in trace.kept.tolist():
        assert set(trace.representative_tokens().tolist()) <= set(row)
    offset = 0 if block else trace.middle_start
    for owner, bucket in zip(trace.bucket_anchor.tolist(), trace.buckets, strict=True):
        assert (trace.unit_anchor[bucket - offset] == owner).all()
    assert trace.anchors.shape[0] == options["anchors"]
    if options["merge"] == "values":
        assert len(trace.merge_weights) == len(trace.buckets)
        for weights, bucket in zip(trace.merge_weights, trace.buckets, strict=True):
            assert weights.shape == (2, bucket.numel())
            assert torch.allclose(weights.sum(dim=1), torch.ones(2))
    else:
        assert trace.merge_weights == []


@pytest.mark.parametrize("granularity", ["token", "block"])
@pytest.mark.parametrize("options", VARIANT_OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_every_variant_keeps_exactly_t_per_head_per_layer_from_a_prepared_prompt(prepared, options, granularity):
    policy = make_policy("kvcrush", 0.3, granularity=granularity, block_size=4, **options)
    trace = prepared.select(policy)
    budget = kvcrush.resolve_budget(0.3, prepared.n_budgeted)
    for layer in trace.layers:
        if granularity == "token":
            assert layer.kept.shape == (2, budget)
        else:
            assert budget - 4 < layer.kept.shape[1] <= budget
        assert set(layer.representatives.tolist()) <= set(layer.candidates.tolist())


# --- representative="best" -----------------------------------------------------------------------

def test_best_representative_is_the_best_scored_bucket_member():
    n = 48
    scores = random_scores(4, n, seed=9)
    layer = synthetic_layer(n)
    spaced = crushed(scores, 16, crush_fraction=0.5).compress(layer)
    best = crushed(scores, 16, crush_fraction=0.5, representative="best").compress(layer)
    assert [b.tolist() for b in spaced.buckets] == [b.tolist() for b in best.buckets]  # same buckets, other picks
    kv_mean = scores.reshape(2, 2, n).mean(dim=1).mean(dim=0)
    for rep, bucket in zip(best.representatives.tolist(), best.buckets, strict=True):
        ranked = sorted(bucket.tolist(), key=lambda t: (-float(kv_mean[t]), t))
        assert rep == ranked[0]
    assert best.representatives.tolist() != spaced.representatives.tolist()


def test_best_representative_at_block_level_uses_block_score_sums():
    n, size = 64, 4
    scores = random_scores(4, n, seed=10)
    trace = crushed(scores, 32, granularity="block", block_size=size, representative="best",
                    crush_fraction=0.5).compress(synthetic_layer(n))
    block_mean = scores.reshape(2, 2, n).mean(dim=1).reshape(2, n // size, size).sum(dim=-1).mean(dim=0)
    for rep, bucket in zip(trace.representatives.tolist(), trace.buckets, strict=True):
        assert rep == sorted(bucket.tolist(), key=lambda b: (-float(block_mean[b]), b))[0]


# --- several anchors -----------------------------------------------------------------------------

def test_several_anchors_share_representatives_by_group_size():
    n = 96
    trace = crushed(random_scores(4, n, seed=12), 40, anchors=3, crush_fraction=0.5).compress(synthetic_layer(n))
    candidates = trace.candidates - trace.middle_start
    sizes = torch.bincount(trace.unit_anchor[candidates], minlength=3).tolist()
    expected = crush.share_out(sizes, trace.crush)
    assert torch.bincount(trace.bucket_anchor, minlength=3).tolist() == expected
    assert sum(expected) == trace.crush_used == trace.crush
    assert torch.equal(trace.anchors, crush.fixed_anchors(trace.signatures, 3, "alternating"))
    ids, distances = crush.nearest_anchor(trace.signatures, trace.anchors)
    assert torch.equal(trace.unit_anchor, ids) and torch.equal(trace.distances, distances)


def test_kmeans_anchors_are_deterministic_for_a_seed(prepared):
    first = prepared.select(make_policy("kvcrush", 0.3, anchors=4, anchor_mode="kmeans", seed=5))
    again = prepared.select(make_policy("kvcrush", 0.3, anchors=4, anchor_mode="kmeans", seed=5))
    for a, b in zip(first.layers, again.layers, strict=True):
        assert torch.equal(a.anchors, b.anchors) and torch.equal(a.kept, b.kept)
        assert torch.equal(a.representatives, b.representatives)
    layer = first.layers[0]
    points = layer.signatures[layer.candidates - layer.middle_start]
    assert torch.equal(layer.anchors, crush.kmeans_anchors(points, 4, seed=5))


@pytest.mark.parametrize("options", [{"anchors": 0}, {"anchors": 9}, {"anchors": True}, {"anchor_mode": "pca"},
                                     {"representative": "first"}, {"split": "auto"}, {"merge": "keys"}])
def test_bad_variant_options_are_refused(options):
    with pytest.raises(PolicyError):
        make_policy("kvcrush", 0.25, **options)


# --- merge="values" ------------------------------------------------------------------------------

def test_merge_weights_are_the_softmax_of_the_members_kv_scores():
    n = 40
    scores = random_scores(4, n, seed=13)
    trace = crushed(scores, 14, merge="values", crush_fraction=0.5).compress(synthetic_layer(n))
    kv_scores = scores.reshape(2, 2, n).mean(dim=1)
    for weights, bucket in zip(trace.merge_weights, trace.buckets, strict=True):
        assert torch.allclose(weights, torch.softmax(kv_scores[:, bucket], dim=1), atol=1e-6)
        assert torch.allclose(weights.sum(dim=1), torch.ones(2))


def test_merge_values_by_hand():
    # 1 KV head, 5 rows of 2 dims; keep rows 0 and 3; row 3 stands for {3, 1, 4} with weights .5, .25, .25
    source = torch.tensor([[[[0.0, 0.0], [4.0, 8.0], [9.0, 9.0], [2.0, 0.0], [0.0, 4.0]]]])
    kept = torch.tensor([[0, 3]])
    values = gather_rows(source, kept)
    rows = kvcrush.trace.MergeRows(targets=torch.tensor([3]), members=torch.tensor([3, 1, 4]),
                                   slot=torch.tensor([0, 0, 0]), weights=torch.tensor([[0.5, 0.25, 0.25]]))
    before = source.clone()
    merge_values(values, source, kept, rows)
    assert values[0, 0].tolist() == [[0.0, 0.0], [2.0, 3.0]]  # .5*(2,0) + .25*(4,8) + .25*(0,4)
    assert torch.equal(source, before)


@pytest.mark.parametrize("granularity", ["token", "block"])
def test_the_compressed_cache_holds_the_merged_values_and_the_full_cache_stays(prepared, granularity):
    policy = make_policy("kvcrush", 0.3, merge="values", granularity=granularity, block_size=4, anchors=2)
    full_keys = [layer.keys.clone() for layer in prepared.cache.layers]
    full_values = [layer.values.clone() for layer in prepared.cache.layers]
    trace = prepared.select(policy)
    cache = compressed_copy(prepared.cache, [layer.kept for layer in trace.layers], prepared.lm.model.config,
                            [layer.merge_rows() for layer in trace.layers])
    for layer, compressed, values, keys in zip(trace.layers, cache.layers, full_values, full_keys, strict=True):
        assert compressed.keys.shape[2] == layer.kept.shape[1]
        assert torch.equal(compressed.keys, gather_rows(keys, layer.kept))  # keys are never merged
        expected = gather_rows(values, layer.kept)[0].clone()
        size = layer.block_size if granularity == "block" else 1
        for rep, bucket, weights in zip(layer.representatives.tolist(), layer.buckets, layer.merge_weights,
                                        strict=True):
            member_rows = [layer.unit_tokens(torch.tensor([m])) for m in bucket.tolist()]
            for offset, position in enumerate(layer.unit_tokens(torch.tensor([rep])).tolist()):
                for head in range(2):
                    merged = sum(float(weights[head, j]) * values[0, head, int(member_rows[j][offset])]
                                 for j in range(len(member_rows)))
                    slot = int((layer.kept[head] == position).nonzero())
                    expected[head, slot] = merged
            assert len(member_rows[0]) == size
        assert torch.allclose(compressed.values[0], expected, atol=1e-5)
        assert not torch.equal(compressed.values, gather_rows(values, layer.kept))  # something really merged
    result = prepared.generate(policy, max_new_tokens=4)
    assert result.trace.layers[0].merge_weights
    for layer, keys, values in zip(prepared.cache.layers, full_keys, full_values, strict=True):
        assert torch.equal(layer.keys, keys) and torch.equal(layer.values, values)


# --- split="adaptive" ----------------------------------------------------------------------------

def test_adaptive_fractions_average_to_the_crush_fraction_and_keep_t(prepared):
    policy = make_policy("kvcrush", 0.3, split="adaptive", crush_fraction=0.25)
    per_layer, _ = prepared.scores(policy)
    fractions = policy.layer_crush_fractions(per_layer, prepared.layers)
    assert len(fractions) == len(prepared.layers) and max(fractions) < 0.9  # nothing clipped here
    assert sum(fractions) / len(fractions) == pytest.approx(0.25)
    trace = prepared.select(policy)
    fixed = prepared.select(make_policy("kvcrush", 0.3))
    for layer, fraction, plain in zip(trace.layers, fractions, fixed.layers, strict=True):
        assert layer.crush_fraction == pytest.approx(fraction)
        assert layer.kept.shape == plain.kept.shape
        middle = layer.budget - layer.sink - layer.recent
        assert layer.crush == kvcrush.budget.round_half_up(fraction * middle)
        assert layer.importance + layer.crush == middle


def test_adaptive_c_follows_the_definition_on_given_scores():
    n, budget = 20, 8
    scores = torch.zeros(4, n)
    scores[:, 5] = 10.0  # one token holds all the mass: c = 1 at any T_imp >= 1
    policy = crushed(scores, budget, split="adaptive")
    flat = crushed(torch.arange(n, dtype=torch.float32).expand(4, n).clone(), budget, split="adaptive")
    layers = [synthetic_layer(n, layer_idx=0, n_layers=2), synthetic_layer(n, layer_idx=1, n_layers=2)]
    # layer 0 concentrated (1 - c = 0), layer 1 spread: T_imp = 6 of 0..19 shifted, c = (14+..+19)/190
    c1 = sum(range(14, 20)) / sum(range(20))
    fractions = policy.layer_crush_fractions([scores, flat.base.scores], layers)
    assert fractions == pytest.approx([0.0, min(0.25 * (1 - c1) / ((1 - c1) / 2), 0.9)])


def test_adaptive_split_refuses_one_layer_compression_and_kvpress():
    policy = make_policy("kvcrush", 0.3, split="adaptive")
    with pytest.raises(PolicyError, match="every layer"):
        policy.compress(synthetic_layer(40))
    from tests.conftest import kvpress_or_skip

    kvpress = kvpress_or_skip("kvcrush.integrations.kvpress")
    with pytest.raises(PolicyError, match="every layer"):
        kvpress.as_press(policy)


def test_decode_time_eviction_uses_the_fixed_split_and_merges(prepared, monkeypatch):
    from kvcrush import decode_eviction

    merged = []

    def counting(values, source, kept, rows):
        merged.append(rows is not None and rows.targets.numel() > 0)
        merge_values(values, source, kept, rows)

    monkeypatch.setattr(decode_eviction, "merge_values", counting)
    policy = make_policy("kvcrush", 48, base="tova", split="adaptive", decode_interval=4, merge="values")
    result = prepared.generate(policy, max_new_tokens=12)
    assert result.decode_evictions and any(merged) and len(merged) == len(result.decode_evictions)
    for eviction in result.decode_evictions:
        assert eviction.crush_fraction == 0.25  # the fixed split: one layer is evicted alone
        assert eviction.kept == 48 and eviction.representatives.shape[0] == eviction.evicted.shape[0]


# --- head reduction and end to end -----------------------------------------------------------------

def test_head_reduction_all_reaches_the_base(prepared):
    policy = make_policy("kvcrush", 0.3, base="snapkv", head_reduction="all")
    assert policy.base.head_reduction == "all"
    for layer in prepared.select(policy).layers:
        assert torch.equal(layer.kept[0], layer.kept[1])  # every KV head keeps the same tokens
        assert torch.equal(layer.scores[0], layer.scores[1])


@pytest.mark.parametrize("granularity", ["token", "block"])
@pytest.mark.parametrize("options", VARIANT_OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_every_variant_generates_end_to_end(tiny_lm, options, granularity):
    policy = make_policy("kvcrush", 0.4, granularity=granularity, block_size=4, **options)
    result = kvcrush.prepare(tiny_lm, TEXT, question="What jumps?").generate(policy, max_new_tokens=4)
    assert len(result.new_token_ids) == 4 and result.kv_bytes_after < result.kv_bytes_before
    assert result.trace.policy["anchors"] == options.get("anchors", 1)
    result.to_json()  # the trace (anchors, weights) exports


def test_all_variants_together_on_the_packaged_model(packaged_lm, essay_prompt):
    policy = make_policy("kvcrush", 0.5, representative="best", split="adaptive", anchors=3, anchor_mode="kmeans",
                         merge="values")
    prepared = kvcrush.prepare(packaged_lm, essay_prompt[:1500], question="What is the essay about?")
    result = prepared.generate(policy, max_new_tokens=8)
    budget = kvcrush.resolve_budget(0.5, prepared.n_budgeted)
    assert all(layer.kept.shape == (3, budget) for layer in result.trace.layers)
    assert result.text.strip()
