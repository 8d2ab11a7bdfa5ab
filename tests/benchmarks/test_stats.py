"""The report's statistics against hand-computed cases (benchmarks/stats.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.stats import binomial_two_sided, bootstrap_mean, mcnemar_exact, paired_bootstrap


def test_binomial_two_sided_matches_hand_computed_tails():
    assert binomial_two_sided(0, 0) == 1.0
    assert binomial_two_sided(0, 5) == pytest.approx(2 / 32)  # 2 * P(X <= 0), n = 5
    assert binomial_two_sided(1, 6) == pytest.approx(2 * 7 / 64)
    assert binomial_two_sided(3, 6) == 1.0  # capped at 1
    assert binomial_two_sided(8, 10) == binomial_two_sided(2, 10)


def test_mcnemar_counts_only_discordant_pairs():
    a = [1, 1, 1, 1, 1, 1, 0, 1, 0, 0]
    b = [0, 0, 0, 0, 0, 0, 0, 1, 0, 0]
    test = mcnemar_exact(a, b)
    assert (test.a_better, test.b_better) == (6, 0)
    assert test.p_value == pytest.approx(2 / 64)
    assert test.significant
    assert test.difference.mean == pytest.approx(0.6)
    same = mcnemar_exact(a, a)
    assert same.p_value == 1.0 and not same.significant


def test_bootstrap_interval_contains_the_mean_and_shrinks_with_more_samples():
    rng = np.random.default_rng(1)
    small = bootstrap_mean(rng.normal(1.0, 1.0, 20).tolist())
    large = bootstrap_mean(rng.normal(1.0, 1.0, 2000).tolist())
    assert small.low < small.mean < small.high
    assert (large.high - large.low) < (small.high - small.low) / 5
    assert large.low < 1.0 < large.high
    assert bootstrap_mean([0.5, 0.5, 0.5]).text() == "0.500 [0.500, 0.500]"
    assert math.isnan(bootstrap_mean([]).mean)
    assert bootstrap_mean([1.0, float("nan"), 3.0]).mean == 2.0


def test_paired_bootstrap_detects_a_consistent_shift_and_not_noise():
    rng = np.random.default_rng(2)
    base = rng.normal(0, 1, 40)
    shifted = paired_bootstrap((base + 0.5).tolist(), base.tolist())
    assert shifted.significant and shifted.difference.excludes_zero() and shifted.difference.mean == pytest.approx(0.5)
    noise = paired_bootstrap((base + rng.normal(0, 0.01, 40)).tolist(), base.tolist())
    assert not noise.significant
    lower = paired_bootstrap([1.0, 2.0], [2.0, 3.0], higher_is_better=False)  # a is lower: better for NLL
    assert (lower.a_better, lower.b_better) == (2, 0)
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [1.0, 2.0])


def test_statistics_are_deterministic():
    values = [0.1, 0.4, 0.35, 0.8, 0.9, 0.2]
    assert bootstrap_mean(values, seed=3) == bootstrap_mean(values, seed=3)
