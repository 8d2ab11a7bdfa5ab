"""The KVCrush building blocks against the spec's definitions and worked cases (spec sections 3-4)."""

import pytest
import torch

import kvcrush
from kvcrush import crush
from kvcrush.crush import block_signatures, buckets, stable_top_indices
from kvcrush.errors import PolicyError


def bits_from(text: str) -> torch.Tensor:
    """'1010 0101' -> [[1,0,1,0],[0,1,0,1]] as bool."""
    return torch.tensor([[c == "1" for c in block] for block in text.split()], dtype=torch.bool)


def test_block_distances_worked_case():
    blocks = bits_from("1010 0101 1100")
    anchor = torch.tensor([1, 0, 1, 0], dtype=torch.bool)
    assert kvcrush.hamming(blocks, anchor).tolist() == [0, 4, 2]


def test_mean_anchor_worked_case():
    blocks = bits_from("1010 1100 1110 0010 0000")
    assert kvcrush.anchor(blocks, "mean").int().tolist() == [1, 0, 1, 0]


def test_representatives_worked_cases():
    distances = torch.tensor([0, 1, 2, 3])
    assert kvcrush.representatives(distances, torch.tensor([0, 1, 2, 3]), 2).tolist() == [0, 2]
    assert kvcrush.representatives(distances, torch.tensor([2, 3]), 5).tolist() == [2, 3]


def test_representatives_sort_by_distance_then_index():
    distances = torch.tensor([5, 1, 1, 0, 3, 1])
    # order by (d, index): 3(0), 1(1), 2(1), 5(1), 4(3), 0(5); |F| = 6, k = 3 -> step 2 -> picks 3, 2, 4
    assert kvcrush.representatives(distances, torch.tensor([0, 1, 2, 3, 4, 5]), 3).tolist() == [3, 2, 4]
    groups = buckets(distances, torch.tensor([0, 1, 2, 3, 4, 5]), 3)
    assert [g.tolist() for g in groups] == [[3, 1], [2, 5], [4, 0]]


def test_representatives_empty_and_zero():
    distances = torch.tensor([1, 2])
    assert kvcrush.representatives(distances, torch.tensor([], dtype=torch.long), 3).numel() == 0
    assert kvcrush.representatives(distances, torch.tensor([0, 1]), 0).numel() == 0


def test_signatures_top_half_per_head_with_index_ties():
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    bits = kvcrush.signatures(scores)
    assert bits.shape == (5, 2)
    assert bits[:, 0].tolist() == [True, True, False, False, False]
    # all tied: the lower indices win
    assert bits[:, 1].tolist() == [True, True, False, False, False]
    assert bits.sum(dim=0).tolist() == [2, 2]


def test_stable_top_indices_prefers_lower_index_on_ties():
    scores = torch.tensor([[1.0, 2.0, 2.0, 0.0, 2.0]])
    assert stable_top_indices(scores, 2).tolist() == [[1, 2]]


@pytest.mark.parametrize("mode", ["zeros", "ones", "alternating", "random", "mean"])
def test_anchor_modes_shape_and_values(mode):
    bits = torch.rand(10, 6, generator=torch.Generator().manual_seed(0)) > 0.5
    result = kvcrush.anchor(bits, mode, seed=3)
    assert result.shape == (6,) and result.dtype == torch.bool
    if mode == "zeros":
        assert not result.any()
    if mode == "ones":
        assert result.all()
    if mode == "alternating":
        assert result.int().tolist() == [0, 1, 0, 1, 0, 1]
    if mode == "random":
        assert torch.equal(result, kvcrush.anchor(bits, mode, seed=3))


def test_random_anchor_depends_on_seed():
    bits = torch.zeros(4, 64, dtype=torch.bool)
    assert not torch.equal(kvcrush.anchor(bits, "random", seed=1), kvcrush.anchor(bits, "random", seed=2))


def test_unknown_anchor_mode_is_a_clear_error():
    with pytest.raises(PolicyError, match="Unknown anchor mode 'middle'"):
        kvcrush.anchor(torch.zeros(2, 2, dtype=torch.bool), "middle")


def test_block_signatures_are_token_major():
    token_bits = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=torch.bool)
    assert block_signatures(token_bits, 2).int().tolist() == [[1, 0, 0, 1], [1, 1, 0, 0]]
    with pytest.raises(ValueError):
        block_signatures(token_bits, 3)


# --- Beyond the paper (spec section 7) ---------------------------------------------------------------

def test_fixed_anchors_follow_the_spec_order_after_the_first():
    bits = bits_from("1100 1110 0100")  # column means 2/3, 1, 1/3, 0 -> mean anchor 1100
    anchors = crush.fixed_anchors(bits, 5, first="alternating", seed=3)
    assert anchors.int().tolist()[:4] == [[0, 1, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]]
    assert torch.equal(anchors[4], kvcrush.anchor(bits, "random", seed=3))
    assert torch.equal(crush.fixed_anchors(bits, 1, first="mean"), kvcrush.anchor(bits, "mean")[None])
    more = crush.fixed_anchors(bits, 7, first="zeros", seed=3)  # past the five modes: more seeded random anchors
    assert more.int().tolist()[:4] == [[0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 0, 1], [1, 1, 0, 0]]
    assert torch.equal(more[5], kvcrush.anchor(bits, "random", seed=4))
    assert torch.equal(more[6], kvcrush.anchor(bits, "random", seed=5))
    with pytest.raises(PolicyError):
        crush.fixed_anchors(bits, 9)


def test_nearest_anchor_breaks_ties_towards_the_lower_index():
    bits = bits_from("1100 0011 1010 1111")
    anchors = bits_from("1100 0011")
    ids, distances = crush.nearest_anchor(bits, anchors)
    assert ids.tolist() == [0, 1, 0, 0]  # 1010 and 1111 are 2 from both anchors
    assert distances.tolist() == [0, 0, 2, 2]
    one_ids, one = crush.nearest_anchor(bits, anchors[:1])
    assert one_ids.tolist() == [0] * 4 and torch.equal(one, kvcrush.hamming(bits, anchors[0]))


def test_kmeans_finds_two_clear_clusters_and_is_deterministic():
    points = bits_from("111000 110000 111100 000111 001111 000011")
    centroids = crush.kmeans_anchors(points, 2, seed=0)
    assert sorted(centroids.int().tolist()) == [[0, 0, 0, 1, 1, 1], [1, 1, 1, 0, 0, 0]]  # majority votes
    for seed in range(5):
        assert torch.equal(crush.kmeans_anchors(points, 3, seed), crush.kmeans_anchors(points, 3, seed))
    assert crush.kmeans_anchors(points[:0], 2).shape == (2, 6)
    # fewer distinct signatures than centroids: repeats, whose clusters stay empty
    same = crush.kmeans_anchors(bits_from("1010 1010"), 3, seed=1)
    assert same.int().tolist() == [[1, 0, 1, 0]] * 3


def test_kmeans_majority_vote_tie_gives_zero():
    points = bits_from("10 01")
    assert crush.kmeans_anchors(points, 1, seed=0).int().tolist() == [[0, 0]]


def test_anchor_set_kmeans_reads_only_the_candidates():
    bits = bits_from("1111 1111 0000 0001")
    anchors = crush.anchor_set(bits, "kmeans", 1, candidates=torch.tensor([2, 3]))
    assert anchors.int().tolist() == [[0, 0, 0, 0]]
    with pytest.raises(PolicyError):
        crush.anchor_set(bits, "median", 2)


def test_share_out_largest_remainders():
    # quotas 2.4, 1.2, 0.4 -> floors 2, 1, 0; one left: remainders .4, .2, .4 tie -> the lower index
    assert crush.share_out([6, 3, 1], 4) == [3, 1, 0]
    assert crush.share_out([5, 5], 3) == [2, 1]
    assert crush.share_out([2, 0, 1], 10) == [2, 0, 1]  # more than the candidates: each group whole
    assert crush.share_out([0, 0], 3) == [0, 0] and crush.share_out([4, 4], 0) == [0, 0]
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        sizes = torch.randint(0, 9, (int(torch.randint(1, 9, (1,), generator=generator)),), generator=generator)
        total = int(torch.randint(0, 40, (1,), generator=generator))
        shares = crush.share_out(sizes.tolist(), total)
        assert sum(shares) == min(total, int(sizes.sum()))
        assert all(0 <= s <= n for s, n in zip(shares, sizes.tolist(), strict=True))
        if sizes.sum() and total <= sizes.sum():  # every share within one of its exact quota
            quotas = [total * n / int(sizes.sum()) for n in sizes.tolist()]
            assert all(abs(s - q) < 1 for s, q in zip(shares, quotas, strict=True))


def test_group_by_anchor_with_one_anchor_is_step_7():
    distances = torch.tensor([5, 1, 1, 0, 3, 1])
    candidates = torch.tensor([0, 1, 2, 3, 4, 5])
    picks, groups, owners = crush.group_by_anchor(distances, torch.zeros(6, dtype=torch.long), candidates, 3, 1)
    expected_picks, expected_groups = crush.group(distances, candidates, 3)
    assert torch.equal(picks, expected_picks) and owners.tolist() == [0, 0, 0]
    assert [g.tolist() for g in groups] == [g.tolist() for g in expected_groups]


def test_group_by_anchor_spaces_picks_within_each_group():
    # units 0..7; anchor 0 owns 0, 2, 4, 6 (distances 3, 1, 2, 0), anchor 1 owns 1, 3 (distances 1, 1)
    distances = torch.tensor([3, 1, 1, 1, 2, 9, 0, 9])
    unit_anchor = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    candidates = torch.tensor([0, 1, 2, 3, 4, 6])
    picks, groups, owners = crush.group_by_anchor(distances, unit_anchor, candidates, 3, 2)
    # group 0 order by (d, i): 6, 2, 4, 0 -> 2 picks, step 2: 6, 4; group 1: 1, 3 -> 1 pick: 1
    assert picks.tolist() == [6, 4, 1]
    assert [g.tolist() for g in groups] == [[6, 2], [4, 0], [1, 3]]
    assert owners.tolist() == [0, 0, 1]


def test_best_in_buckets_takes_the_highest_score_lower_index_on_ties():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.9, float("nan"), 0.2])
    groups = [torch.tensor([0, 3, 1]), torch.tensor([2]), torch.tensor([4, 5])]
    assert crush.best_in_buckets(groups, scores).tolist() == [1, 2, 5]
    assert crush.best_in_buckets([], scores).numel() == 0


def test_merge_weights_are_the_softmax_of_member_scores_per_head():
    scores = torch.tensor([[0.0, 1.0, 2.0, 3.0], [5.0, 5.0, 5.0, 0.0]])
    weights, sizes = crush.merge_weights([torch.tensor([2, 0]), torch.tensor([3])], scores)
    assert sizes == [2, 1] and weights.shape == (2, 3)
    expected = torch.softmax(torch.tensor([2.0, 0.0]), dim=0)
    assert torch.allclose(weights[0, :2], expected) and torch.allclose(weights[1, :2], torch.tensor([0.5, 0.5]))
    assert torch.allclose(weights[:, 2], torch.ones(2))


def test_top_share_and_adaptive_fractions():
    scores = torch.tensor([[1.0, 1.0, 3.0, 5.0]])  # minus the minimum: 0, 0, 2, 4 -> top 1 holds 4 of 6
    assert crush.top_share(scores, 1).item() == pytest.approx(4 / 6)
    assert crush.top_share(torch.ones(2, 4), 1).item() == pytest.approx(1 / 4)  # no mass: an even spread
    fractions = crush.adaptive_fractions(0.25, [0.2, 0.6, None, 0.4])
    assert fractions == pytest.approx([0.125, 0.375, 0.25, 0.25])
    assert sum(fractions[i] for i in (0, 1, 3)) / 3 == pytest.approx(0.25)
    assert crush.adaptive_fractions(0.5, [0.1, 1.9]) == pytest.approx([0.05, 0.9])  # clipped at 0.9
    assert crush.adaptive_fractions(0.25, [0.0, 0.0]) == [0.25, 0.25]


def _kmeans_reference(points: torch.Tensor, k: int, seed: int, iterations: int = 10) -> torch.Tensor:
    """Spec section 7's k-means written with `torch.unique` and `bincount` (an independent oracle)."""
    if points.shape[0] == 0:
        return torch.zeros(k, points.shape[1], dtype=torch.bool)
    distinct = torch.unique(points, dim=0)
    order = torch.randperm(distinct.shape[0], generator=torch.Generator().manual_seed(seed))
    centroids = distinct[order[torch.arange(k) % distinct.shape[0]]]
    for _ in range(iterations):
        distances = (points[:, None, :] ^ centroids[None]).sum(dim=-1)
        ids = distances.min(dim=1).indices
        counts = torch.bincount(ids, minlength=k)[:, None].float()
        ones = torch.zeros(k, points.shape[1]).index_add_(0, ids, points.float())
        centroids = torch.where(counts > 0, ones * 2 > counts, centroids)
    return centroids


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("width", [3, 9, 70, 130])  # one packed word, and several
def test_kmeans_over_candidates_matches_unique_based_reference(seed, width):
    generator = torch.Generator().manual_seed(seed)
    bits = torch.rand(40, width, generator=generator) > 0.5
    bits[5:15] = bits[0]  # repeated signatures
    valid = torch.rand(40, generator=generator) > 0.4
    k = 1 + seed % 4
    distinct = crush.distinct_signatures(bits, valid)
    assert int(distinct.count) == torch.unique(bits[valid], dim=0).shape[0]
    seeds = crush.kmeans_seeds(int(distinct.count), k, seed)
    assert torch.equal(crush.kmeans_from(bits, valid, distinct, seeds), _kmeans_reference(bits[valid], k, seed))
    assert torch.equal(crush.kmeans_anchors(bits[valid], k, seed), _kmeans_reference(bits[valid], k, seed))


def test_kmeans_without_valid_rows_gives_zero_centroids():
    bits = torch.ones(6, 4, dtype=torch.bool)
    valid = torch.zeros(6, dtype=torch.bool)
    distinct = crush.distinct_signatures(bits, valid)
    centroids = crush.kmeans_from(bits, valid, distinct, crush.kmeans_seeds(int(distinct.count), 2, 0))
    assert not centroids.any() and centroids.shape == (2, 4)


def test_spaced_groups_from_host_counts_equal_group_by_anchor():
    distances = torch.tensor([3, 1, 1, 1, 2, 9, 0, 9])
    unit_anchor = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    candidate = torch.tensor([True, True, True, True, True, False, True, False])
    ordered = crush.order_candidates(distances, candidate, unit_anchor)[:6]
    sizes = crush.group_sizes(unit_anchor, candidate, 2).tolist()
    assert sizes == [4, 2]
    picks, buckets, segment, owners = crush.spaced_groups(ordered, sizes, crush.share_out(sizes, 3))
    expected_picks, expected_buckets, expected_owners = crush.group_by_anchor(
        distances, unit_anchor, candidate.nonzero().flatten(), 3, 2)
    assert picks.tolist() == expected_picks.tolist() == [6, 4, 1] and owners == expected_owners.tolist()
    assert [b.tolist() for b in buckets] == [b.tolist() for b in expected_buckets]
    assert segment.tolist() == [0, 0, 1, 1, 2, 2]  # each bucket member's bucket, in torch.cat(buckets) order


def test_signatures_rank_nan_and_infinity_as_a_stable_sort_does():
    scores = torch.tensor([[1.0, float("nan"), float("inf"), 2.0, float("nan"), -float("inf"), 2.0, 0.0],
                           [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, float("inf"), float("inf")]])
    half = scores.shape[1] // 2
    expected = torch.zeros(2, 8, dtype=torch.bool)
    expected.scatter_(1, crush.stable_top_indices(scores, half), True)
    assert torch.equal(crush.signatures(scores), expected.T)
