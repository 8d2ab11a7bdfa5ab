"""Each baseline's scores and kept sets behave as its paper (and spec section 2) says."""

import pytest
import torch

from kvcrush.attention import accumulated_attention, window_attention
from kvcrush.policies import make_policy
from kvcrush.policies.pyramidkv import pyramid_budgets
from tests.conftest import capture_layer_inputs


@pytest.fixture(scope="module")
def layers(tiny_lm):
    ids = torch.randint(0, 5000, (1, 120), generator=torch.Generator().manual_seed(3))
    captured, _ = capture_layer_inputs(tiny_lm, ids)
    return captured


def test_full_never_evicts(layers):
    trace = make_policy("full", budget=0.1).compress(layers[0])
    assert trace.no_op and trace.kept.shape[1] == 120


def test_streaming_keeps_sink_and_most_recent(layers):
    trace = make_policy("streaming", budget=30).compress(layers[0])
    expected = list(range(4)) + list(range(120 - 26, 120))
    assert all(row == expected for row in trace.kept.tolist())


def test_knorm_keeps_smallest_key_norms(layers):
    layer = layers[1]
    trace = make_policy("knorm", budget=25).compress(layer)
    norms = layer.keys[0].norm(dim=-1)
    for head in range(layer.kv_heads):
        assert trace.kept[head].tolist() == sorted(norms[head].argsort()[:25].tolist())


def test_random_is_seeded(layers):
    first = make_policy("random", budget=30, seed=1).compress(layers[0]).kept
    assert torch.equal(first, make_policy("random", budget=30, seed=1).compress(layers[0]).kept)
    assert not torch.equal(first, make_policy("random", budget=30, seed=2).compress(layers[0]).kept)


def test_h2o_scores_are_accumulated_attention_group_means(layers):
    layer = layers[0]
    policy = make_policy("h2o", budget=40)
    expected = accumulated_attention(layer).reshape(layer.kv_heads, layer.group_size, -1).mean(dim=1)
    torch.testing.assert_close(policy.kv_scores(policy.score(layer), layer), expected)
    trace = policy.compress(layer)
    assert set(range(120 - 32, 120)) <= set(trace.kept[0].tolist())


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_snapkv_keeps_window_and_pools(layers, pooling):
    layer = layers[1]
    policy = make_policy("snapkv", budget=50, window=16, pooling=pooling)
    raw = window_attention(layer, 120 - 16, 120)[:, : 120 - 16]
    pool = torch.nn.functional.max_pool1d if pooling == "max" else torch.nn.functional.avg_pool1d
    expected = pool(raw[None], 5, stride=1, padding=2)[0]
    torch.testing.assert_close(policy.score(layer)[:, : 120 - 16], expected)
    trace = policy.compress(layer)
    assert trace.recent == 16 and all(set(range(104, 120)) <= set(row) for row in trace.kept.tolist())


def test_snapkv_query_aware_window_is_the_question(tiny_lm):
    ids = torch.randint(0, 5000, (1, 100), generator=torch.Generator().manual_seed(4))
    captured, _ = capture_layer_inputs(tiny_lm, ids)
    layer = captured[0]
    layer.window_start, layer.query_aware = 90, True  # the last 10 tokens are the question
    policy = make_policy("snapkv", budget=20)
    assert policy.observation_window(layer) == (90, 100)
    assert policy.recent_tokens(layer) == 10
    trace = policy.compress(layer)
    assert trace.kept.shape == (2, 20) and all(set(range(90, 100)) <= set(row) for row in trace.kept.tolist())
    for name in ("h2o", "knorm", "streaming", "tova", "kvcrush"):
        kept = make_policy(name, budget=20).compress(layer).kept
        assert all(set(range(90, 100)) <= set(row) for row in kept.tolist()), name


@pytest.mark.parametrize("reduction", ["group", "all"])
def test_tova_uses_the_last_query(layers, reduction):
    layer = layers[0]
    trace = make_policy("tova", budget=30, head_reduction=reduction).compress(layer)
    assert 119 in trace.kept[0].tolist()
    if reduction == "all":
        assert torch.equal(trace.kept[0], trace.kept[1])


def test_pyramid_budgets_shrink_with_depth_and_keep_the_total():
    budgets = pyramid_budgets(100, 8, 1000, 20.0)
    assert sum(budgets) == 800
    assert all(a >= b for a, b in zip(budgets, budgets[1:], strict=False))
    assert budgets[0] > budgets[-1]
    capped = pyramid_budgets(900, 8, 1000, 20.0)
    assert max(capped) <= 1000 and sum(capped) == 7200


def test_pyramidkv_layers_get_different_budgets(layers):
    policy = make_policy("pyramidkv", budget=40)
    sizes = [policy.compress(layer).kept.shape[1] for layer in layers]
    assert sizes[0] > sizes[1] and sum(sizes) == 80
