"""`keydiff` keeps the most distinctive keys, and the same sets as kvpress's KeyDiffPress.

Parity follows tests/policies/test_kvpress_agreement.py: kvpress keeps `int(N * (1 - ratio))` tokens
per head and we keep `ceil(fraction * N)`, so our policy gets kvpress's count as an integer budget;
sink and recent are 0 on both sides (our defaults; KeyDiffPress protects nothing).
"""

import pytest
import torch

import kvcrush
from benchmarks.grid import PARITY_PAIRS
from kvcrush.policies import BASE_CHOICES, POLICIES, make_policy
from kvcrush.prompts import EncodedPrompt
from tests.conftest import kvpress_or_skip, synthetic_layer


def _assert_same_kept(prepared, ids, lm, ratio):
    expected = kvpress_or_skip("benchmarks.kvpress_runner").press_kept_indices(lm.model, "keydiff", ratio, ids)
    trace = prepared.select(make_policy("keydiff", budget=expected[0].shape[1]))
    for layer, reference in zip(trace.layers, expected, strict=True):
        assert torch.equal(layer.kept, reference.cpu()), f"layer {layer.layer} differs"


@pytest.fixture(scope="module")
def tiny_prompt(tiny_lm):
    ids = torch.randint(0, 8000, (300,), generator=torch.Generator().manual_seed(11)).tolist()
    return ids, kvcrush.prepare_encoded(tiny_lm, EncodedPrompt(ids, []))


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_kept_sets_equal_kvpress_keydiff_on_the_tiny_model(tiny_lm, tiny_prompt, ratio):
    ids, prepared = tiny_prompt
    _assert_same_kept(prepared, ids, tiny_lm, ratio)


@pytest.mark.slow
def test_kept_sets_equal_kvpress_keydiff_on_the_packaged_model(packaged_lm, essay_prompt):
    ids = packaged_lm.tokenizer.encode(essay_prompt, add_special_tokens=False)[:400]
    prepared = kvcrush.prepare_encoded(packaged_lm, EncodedPrompt(ids, []))
    for ratio in (0.5, 0.8):
        _assert_same_kept(prepared, ids, packaged_lm, ratio)


def test_score_is_minus_cosine_to_the_mean_normalised_key():
    layer = synthetic_layer(40, kv_heads=2)
    scores = make_policy("keydiff").score(layer)
    assert scores.shape == (2, 40)
    for head in range(2):
        keys = layer.keys[0, head]
        unit = keys / keys.norm(dim=-1, keepdim=True)
        anchor = unit.mean(dim=0)
        expected = -(unit @ anchor) / anchor.norm()
        assert torch.allclose(scores[head], expected, atol=1e-6)


def test_scores_ignore_key_scale_and_keep_the_odd_key_out():
    layer = synthetic_layer(20, kv_heads=1)
    direction = torch.randn(8, generator=torch.Generator().manual_seed(3))
    layer.keys[0, 0] = direction * torch.linspace(0.5, 3.0, 20)[:, None]  # all alike, different norms
    layer.keys[0, 0, 7] = -direction  # the one distinctive key
    scores = make_policy("keydiff").score(layer)
    assert scores[0].argmax() == 7
    others = torch.cat([scores[0, :7], scores[0, 8:]])
    assert torch.allclose(others, others[0].expand_as(others), atol=1e-6)  # scale does not matter


def test_keydiff_is_declared_for_every_consumer():
    cls = POLICIES["keydiff"]
    assert cls.kvpress_press == "keydiff" and "keydiff" in BASE_CHOICES
    policy = make_policy("keydiff", decode_interval=8)  # keys only: it can evict while decoding
    assert policy.scoring_rows(4096) == 0
    layer = synthetic_layer(30)
    start, end = policy.query_rows(layer)
    assert start == end
    assert PARITY_PAIRS["kvpress:keydiff"] == ("keydiff",)
    assert make_policy("kvcrush", base="keydiff").base.name == "keydiff"
