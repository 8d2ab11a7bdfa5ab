"""The common selection code every policy shares: exact budgets, sink and recent, no-ops."""

import pytest
import torch

from kvcrush.budget import resolve_budget
from tests.conftest import synthetic_layer
from tests.policies.helpers import GivenScores, random_scores


@pytest.mark.parametrize("budget", [0.1, 0.25, 0.5, 0.9, 1, 7, 40])
@pytest.mark.parametrize("sink,recent", [(0, 0), (4, 0), (0, 8), (4, 8)])
def test_every_head_keeps_exactly_t_with_sink_and_recent(budget, sink, recent):
    n = 60
    layer = synthetic_layer(n, kv_heads=3, query_heads=6)
    policy = GivenScores(budget=budget, sink=sink, recent=recent, scores=random_scores(6, n, seed=1))
    trace = policy.compress(layer)
    t = min(resolve_budget(budget, n), n)
    assert trace.kept.shape == (3, t)
    for row in trace.kept.tolist():
        assert row == sorted(set(row))
        assert all(0 <= i < n for i in row)
        assert set(range(min(sink, t))) <= set(row)
    keep_recent = min(recent, t - min(sink, t))
    for row in trace.kept.tolist():
        assert set(range(n - keep_recent, n)) <= set(row)


def test_heads_keep_their_own_top_tokens_by_group_mean():
    n = 20
    scores = torch.zeros(4, n)
    scores[0:2, 3] = 5.0  # group 0 (query heads 0-1) likes token 3
    scores[2:4, 15] = 5.0  # group 1 likes token 15
    trace = GivenScores(budget=1, scores=scores).compress(synthetic_layer(n, kv_heads=2, query_heads=4))
    assert trace.kept.tolist() == [[3], [15]]


def test_ties_prefer_the_lower_index():
    trace = GivenScores(budget=3, scores=torch.ones(2, 10)).compress(synthetic_layer(10))
    assert trace.kept.tolist() == [[0, 1, 2], [0, 1, 2]]


def test_budget_at_least_n_keeps_everything_and_says_so():
    trace = GivenScores(budget=100, scores=random_scores(4, 30, seed=2)).compress(synthetic_layer(30))
    assert trace.no_op and trace.kept.shape == (2, 30)
    assert trace.kept[0].tolist() == list(range(30))


def test_trace_scores_cover_the_middle_only():
    trace = GivenScores(budget=10, sink=2, recent=3, scores=random_scores(4, 30, seed=3)).compress(synthetic_layer(30))
    assert trace.scores.shape == (2, 30 - 2 - 3)
    assert (trace.middle_start, trace.middle_end) == (2, 27)
