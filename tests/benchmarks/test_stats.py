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


# ---------------------------------------------------------------------------------------------
# The scipy.stats implementation against the hand-written one it replaced.
# The expected values below are literal outputs of the previous hand-written implementation (numpy
# resampling, `math.comb` binomial tails) at commit 65c45b11054ea500e4b343199c3e4f7d54b6fbef, recorded on
# these inputs before the module moved to `scipy.stats.bootstrap` and `scipy.stats.binomtest`.
# The report prints intervals with 3 decimals (`Interval.text`, `report.interval_text`) and p-values with 2
# significant digits (`p=...:.2g`): that is the contract. Tighter still, scipy draws the same resamples
# (one batch of `default_rng(seed).integers(0, n, (resamples, n))`) and the percentiles are read the same
# way, so intervals agree to 1e-12; binomtest's p differs from the exact sum only in the last digits
# (0.05688793364098079 against ...089 for 40 of 100), hence a relative 1e-12.

SCORES = [0.1, 0.4, 0.35, 0.8, 0.9, 0.2, 0.55, 0.05, 0.7, 0.3]
NLL_A = [2.31, 1.87, 2.05, 2.64, 1.92, 2.11, 2.48, 1.76, 2.2, 2.03, 1.95, 2.37]
NLL_B = [2.4, 1.9, 2.21, 2.6, 2.08, 2.15, 2.61, 1.8, 2.19, 2.2, 2.02, 2.5]
MID = [s + d for s, d in zip(SCORES, [0.05, -0.02, 0.1, 0.03, -0.04, 0.08, 0.0, 0.06, -0.01, 0.04], strict=True)]
HITS_A = [1, 1, 0, 1, 1, 1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 1, 0, 1, 1, 1]
HITS_B = [1, 0, 0, 1, 0, 1, 0, 0, 1, 0, 1, 0, 1, 0, 0, 1, 0, 1, 0, 1]
HITS_C = [1, 0, 1, 1, 0, 1, 1, 0, 1, 0, 1, 1, 0, 1, 1, 0, 1, 1, 0, 1]

PREVIOUS_INTERVALS = [  # (call, (mean, low, high, n))
    (lambda: bootstrap_mean(SCORES, seed=0), (0.43499999999999994, 0.26987500000000014, 0.61, 10)),
    (lambda: bootstrap_mean(SCORES, seed=3), (0.43499999999999994, 0.2698750000000002, 0.6199999999999999, 10)),
    (lambda: bootstrap_mean(HITS_A), (0.75, 0.55, 0.9, 20)),
]
PREVIOUS_TESTS = [  # (call, (mean, low, high, n), p, a_better, b_better)
    (lambda: paired_bootstrap(NLL_A, NLL_B),
     (-0.08083333333333333, -0.11833333333333342, -0.043333333333333224, 12), 0.0005, 2, 10),
    (lambda: paired_bootstrap(NLL_A, NLL_B, higher_is_better=False),
     (-0.08083333333333333, -0.11833333333333342, -0.043333333333333224, 12), 0.0005, 10, 2),
    (lambda: paired_bootstrap(SCORES, SCORES[::-1]), (2.7755575615628915e-18, -0.24, 0.2401249999999993, 10),
     0.987, 5, 5),
    (lambda: paired_bootstrap(MID, SCORES), (0.028999999999999998, 0.001999999999999996, 0.05500000000000001, 10),
     0.039, 6, 3),
    (lambda: paired_bootstrap(MID, SCORES, seed=7, resamples=500),
     (0.028999999999999998, 0.0014750000000000004, 0.05552499999999998, 10), 0.036, 6, 3),
    (lambda: mcnemar_exact(HITS_A, HITS_B), (0.3, 0.1, 0.5, 20), 0.03125, 6, 0),
    (lambda: mcnemar_exact(HITS_B, HITS_A), (-0.3, -0.5, -0.1, 20), 0.03125, 0, 6),
    (lambda: mcnemar_exact(HITS_A, HITS_C), (0.1, -0.2, 0.4, 20), 0.75390625, 6, 4),
]
PREVIOUS_BINOMIAL = [((0, 5), 0.0625), ((1, 6), 0.21875), ((2, 10), 0.109375), ((8, 10), 0.109375), ((3, 6), 1.0),
                     ((7, 30), 0.005222879350185394), ((40, 100), 0.05688793364098079), ((0, 0), 1.0)]


def _assert_interval_matches(interval, expected):
    mean, low, high, n = expected
    assert interval.n == n
    assert interval.text() == f"{mean:.3f} [{low:.3f}, {high:.3f}]"  # the printed precision
    assert (interval.mean, interval.low, interval.high) == pytest.approx((mean, low, high), rel=0, abs=1e-12)


@pytest.mark.parametrize(("call", "expected"), PREVIOUS_INTERVALS)
def test_bootstrap_intervals_match_the_previous_implementation(call, expected):
    _assert_interval_matches(call(), expected)


@pytest.mark.parametrize(("call", "expected", "p_value", "a_better", "b_better"), PREVIOUS_TESTS)
def test_paired_tests_match_the_previous_implementation(call, expected, p_value, a_better, b_better):
    test = call()
    _assert_interval_matches(test.difference, expected)
    assert f"{test.p_value:.2g}" == f"{p_value:.2g}"  # as the report prints it
    assert test.p_value == pytest.approx(p_value, rel=1e-12)
    assert (test.a_better, test.b_better) == (a_better, b_better)


@pytest.mark.parametrize(("k_n", "p_value"), PREVIOUS_BINOMIAL)
def test_binomial_p_values_match_the_previous_implementation(k_n, p_value):
    result = binomial_two_sided(*k_n)
    assert f"{result:.2g}" == f"{p_value:.2g}"
    assert result == pytest.approx(p_value, rel=1e-12)
