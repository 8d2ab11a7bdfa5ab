"""Statistics for the benchmark report: bootstrap intervals, paired bootstrap, McNemar's exact test.

- Mean with a 95% percentile-bootstrap interval (Efron & Tibshirani, "An Introduction to the
  Bootstrap", 1993): resample the samples with replacement, take the 2.5th and 97.5th percentiles
  of the resampled means.
- Paired difference of two systems on the same samples: the per-sample differences are resampled
  (paired bootstrap); the two-sided p-value is twice the smaller tail share of resampled means on
  either side of zero (floored at one resample).
- Hits (0/1) of two systems on the same samples: McNemar's exact test (McNemar, 1947): under the
  null, the discordant pairs split as Binomial(b + c, 1/2); p is the two-sided binomial tail.

Every function is deterministic for a given `seed`. Pure numpy; inputs are sequences of floats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


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


def _resampled_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(values), size=(resamples, len(values)))
    return values[index].mean(axis=1)


def bootstrap_mean(values: Sequence[float], resamples: int = RESAMPLES, seed: int = 0) -> Interval:
    """Mean and 95% percentile-bootstrap interval (NaN entries dropped; NaN interval when empty)."""
    array = _clean(values)
    if len(array) == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    if len(array) == 1 or np.all(array == array[0]):
        return Interval(float(array.mean()), float(array.mean()), float(array.mean()), len(array))
    means = _resampled_means(array, resamples, seed)
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(float(array.mean()), float(low), float(high), len(array))


def paired_bootstrap(a: Sequence[float], b: Sequence[float], resamples: int = RESAMPLES, seed: int = 0,
                     higher_is_better: bool = True) -> PairedTest:
    """Mean of `a - b` over paired samples (pairs with a NaN dropped), its interval and two-sided p."""
    a_arr, b_arr = np.asarray(list(a), dtype=float), np.asarray(list(b), dtype=float)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"Paired samples differ in length: {len(a_arr)} and {len(b_arr)}.")
    keep = ~(np.isnan(a_arr) | np.isnan(b_arr))
    diff = a_arr[keep] - b_arr[keep]
    sign = 1 if higher_is_better else -1
    a_better, b_better = int((sign * diff > 0).sum()), int((sign * diff < 0).sum())
    if len(diff) == 0:
        return PairedTest(Interval(math.nan, math.nan, math.nan, 0), math.nan, "paired bootstrap")
    interval = bootstrap_mean(diff, resamples, seed)
    if np.all(diff == diff[0]):
        p_value = 1.0 if diff[0] == 0 else 0.0
    else:
        means = _resampled_means(diff, resamples, seed)
        tail = min((means <= 0).mean(), (means >= 0).mean())
        p_value = float(min(1.0, max(2 * tail, 1 / resamples)))
    return PairedTest(interval, p_value, "paired bootstrap", a_better, b_better)


def mcnemar_exact(a_hits: Sequence[float], b_hits: Sequence[float], resamples: int = RESAMPLES,
                  seed: int = 0) -> PairedTest:
    """McNemar's exact test on paired 0/1 outcomes; the difference interval is a paired bootstrap."""
    a_arr, b_arr = np.asarray(list(a_hits), dtype=float), np.asarray(list(b_hits), dtype=float)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"Paired samples differ in length: {len(a_arr)} and {len(b_arr)}.")
    keep = ~(np.isnan(a_arr) | np.isnan(b_arr))
    a_arr, b_arr = a_arr[keep] > 0.5, b_arr[keep] > 0.5
    only_a, only_b = int((a_arr & ~b_arr).sum()), int((~a_arr & b_arr).sum())
    difference = bootstrap_mean(a_arr.astype(float) - b_arr.astype(float), resamples, seed)
    return PairedTest(difference, binomial_two_sided(only_a, only_a + only_b), "McNemar exact", only_a, only_b)


def binomial_two_sided(k: int, n: int) -> float:
    """Two-sided p of `k` successes in `n` fair coin flips: twice the smaller tail, at most 1."""
    if n == 0:
        return 1.0
    smaller = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(smaller + 1)) / 2**n
    return float(min(1.0, 2 * tail))


__all__ = ["Interval", "PairedTest", "bootstrap_mean", "paired_bootstrap", "mcnemar_exact", "binomial_two_sided",
           "RESAMPLES", "LEVEL"]
