"""The KVCrush building blocks against the spec's definitions and worked cases (spec sections 3-4)."""

import pytest
import torch

import kvcrush
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
