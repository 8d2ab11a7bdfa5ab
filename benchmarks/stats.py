"""Statistics for the benchmark report: bootstrap intervals, paired bootstrap, McNemar's exact test, on scipy.stats.

- Mean with a 95% percentile-bootstrap interval (Efron & Tibshirani, "An Introduction to the
  Bootstrap", 1993): `scipy.stats.bootstrap` with ``method="percentile"``, resampling the samples with
  replacement and taking the 2.5th and 97.5th percentiles of the resampled means.
- Paired difference of two systems on the same samples: the per-sample differences are resampled
  (paired bootstrap); the two-sided p-value is twice the smaller tail share of the resampled means
  (`BootstrapResult.bootstrap_distribution`) on either side of zero, floored at one resample.
- Hits (0/1) of two systems on the same samples: McNemar's exact test (McNemar, 1947): under the
  null, the discordant pairs split as Binomial(b + c, 1/2); p is `scipy.stats.binomtest`'s two-sided p.

Every function is deterministic for a given `seed`: `scipy.stats.bootstrap` draws all resamples in one
batch from ``numpy.random.default_rng(seed)``, as ``rng.integers(0, n, (resamples, n))``, so the intervals
are those of the hand-written bootstrap this module held before (tests/benchmarks/test_stats.py keeps its
numbers). Inputs are sequences of floats; NaN entries (or pairs with a NaN) are dropped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

RESAMPLES = 2000
LEVEL = 0.95
TAIL_PCT = (1 - LEVEL) / 2 * 100  # each tail of the two-sided interval, in percent


@dataclass(frozen=True)
class Interval:
    """A mean and its bootstrap interval `[low, high]` over `n` samples."""

    mean: float
    low: float
    high: float
    n: int

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def text(self, digits: int = 3) -> str:
        if math.isnan(self.mean):
            return "n/a"
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


EMPTY = Interval(math.nan, math.nan, math.nan, 0)


@dataclass(frozen=True)
class PairedTest:
    """System A minus system B on the same samples: mean difference with interval, p-value, test name."""

    difference: Interval
    p_value: float
    test: str
    a_better: int = 0  # samples where A beats B (discordant pairs for McNemar)
    b_better: int = 0

    @property
    def significant(self) -> bool:
        return self.p_value < 1 - LEVEL


def _clean(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(list(values), dtype=float)
    return array[~np.isnan(array)]


def _bootstrap(array: np.ndarray, resamples: int, seed: int) -> tuple[Interval, np.ndarray]:
    """The mean of a non-empty `array` with its percentile interval, and the resampled means."""
    mean = float(array.mean())
    if np.all(array == array[0]):  # one sample or no spread: scipy needs two and warns on degenerate data
        return Interval(mean, mean, mean, len(array)), np.full(1, mean)
    result = stats.bootstrap((array,), np.mean, n_resamples=resamples, confidence_level=LEVEL,
                             method="percentile", vectorized=True, rng=np.random.default_rng(seed))
    means = result.bootstrap_distribution
    # The percentiles of scipy's own resampled means, read with np.percentile rather than taken from
    # `result.confidence_interval`: scipy 1.17's `stats.quantile` interpolates in another order, which
    # moves the bounds by an ulp, enough to round an exact -0.0325 of the committed results the other way.
    low, high = np.percentile(means, [TAIL_PCT, 100 - TAIL_PCT])
    return Interval(mean, float(low), float(high), len(array)), means


def bootstrap_mean(values: Sequence[float], resamples: int = RESAMPLES, seed: int = 0) -> Interval:
    """Mean and 95% percentile-bootstrap interval (NaN entries dropped; NaN interval when empty)."""
    array = _clean(values)
    return _bootstrap(array, resamples, seed)[0] if len(array) else EMPTY


def _paired_arrays(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """`a` and `b` as arrays without the pairs where either is NaN."""
    a_arr, b_arr = np.asarray(list(a), dtype=float), np.asarray(list(b), dtype=float)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"Paired samples differ in length: {len(a_arr)} and {len(b_arr)}.")
    keep = ~(np.isnan(a_arr) | np.isnan(b_arr))
    return a_arr[keep], b_arr[keep]


def paired_bootstrap(a: Sequence[float], b: Sequence[float], resamples: int = RESAMPLES, seed: int = 0,
                     higher_is_better: bool = True) -> PairedTest:
    """Mean of `a - b` over paired samples (pairs with a NaN dropped), its interval and two-sided p."""
    a_arr, b_arr = _paired_arrays(a, b)
    diff = a_arr - b_arr
    if len(diff) == 0:
        return PairedTest(EMPTY, math.nan, "paired bootstrap")
    sign = 1 if higher_is_better else -1
    a_better, b_better = int((sign * diff > 0).sum()), int((sign * diff < 0).sum())
    interval, means = _bootstrap(diff, resamples, seed)
    if np.all(diff == diff[0]):
        p_value = 1.0 if diff[0] == 0 else 0.0
    else:
        tail = min((means <= 0).mean(), (means >= 0).mean())
        p_value = float(min(1.0, max(2 * tail, 1 / resamples)))
    return PairedTest(interval, p_value, "paired bootstrap", a_better, b_better)


def mcnemar_exact(a_hits: Sequence[float], b_hits: Sequence[float], resamples: int = RESAMPLES,
                  seed: int = 0) -> PairedTest:
    """McNemar's exact test on paired 0/1 outcomes; the difference interval is a paired bootstrap."""
    a_arr, b_arr = _paired_arrays(a_hits, b_hits)
    a_arr, b_arr = a_arr > 0.5, b_arr > 0.5
    only_a, only_b = int((a_arr & ~b_arr).sum()), int((~a_arr & b_arr).sum())
    difference = bootstrap_mean(a_arr.astype(float) - b_arr.astype(float), resamples, seed)
    return PairedTest(difference, binomial_two_sided(only_a, only_a + only_b), "McNemar exact", only_a, only_b)


def binomial_two_sided(k: int, n: int) -> float:
    """Two-sided p of `k` successes in `n` fair coin flips (`scipy.stats.binomtest`; at p = 1/2 it is twice
    the smaller tail, at most 1). No flips (no discordant pair): 1."""
    if n == 0:  # binomtest needs n >= 1; no evidence either way
        return 1.0
    return float(stats.binomtest(k, n, 0.5).pvalue)


__all__ = ["Interval", "PairedTest", "bootstrap_mean", "paired_bootstrap", "mcnemar_exact", "binomial_two_sided",
           "RESAMPLES", "LEVEL"]
