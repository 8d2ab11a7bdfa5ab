"""Budget rules (spec section 1 and section 3 step 1)."""

import math

import pytest

from kvcrush.budget import parse_budget, plan_budget, resolve_budget
from kvcrush.errors import BudgetError


@pytest.mark.parametrize("fraction,n,expected", [(0.25, 100, 25), (0.25, 101, 26), (0.001, 50, 1), (1.0, 7, 7)])
def test_fraction_is_ceiling_never_below_one(fraction, n, expected):
    assert resolve_budget(fraction, n) == expected == max(1, math.ceil(fraction * n))


def test_token_budget_passes_through_and_may_exceed_n():
    assert resolve_budget(512, 100) == 512


@pytest.mark.parametrize("text,expected", [("0.25", 0.25), ("25%", 0.25), ("512", 512), (" 1 ", 1.0), (0.5, 0.5)])
def test_parse_budget(text, expected):
    assert parse_budget(text) == expected


@pytest.mark.parametrize("bad", [0, -3, 0.0, -0.5, 1.5, "abc", "", "150%", float("nan"), float("inf"), True])
def test_bad_budgets_are_refused_with_a_message(bad):
    with pytest.raises(BudgetError) as error:
        parse_budget(bad)
    assert "udget" in str(error.value)


def test_plan_splits_sink_recent_importance_crush():
    plan = plan_budget(n_tokens=100, budget_tokens=40, sink=4, recent=8, crush_fraction=0.25)
    assert (plan.sink, plan.recent, plan.importance, plan.crush) == (4, 8, 21, 7)
    assert plan.sink + plan.recent + plan.importance + plan.crush == 40
    assert not plan.no_op


def test_plan_clips_sink_and_recent_to_small_budgets():
    plan = plan_budget(n_tokens=100, budget_tokens=10, sink=4, recent=32)
    assert (plan.sink, plan.recent, plan.importance, plan.crush) == (4, 6, 0, 0)


def test_budget_at_least_n_is_a_no_op():
    assert plan_budget(n_tokens=50, budget_tokens=50, sink=4, recent=8).no_op
    assert plan_budget(n_tokens=50, budget_tokens=500, sink=4, recent=8).no_op


def test_crush_fraction_out_of_range():
    with pytest.raises(BudgetError, match="crush_fraction"):
        plan_budget(100, 40, 0, 0, crush_fraction=1.5)
