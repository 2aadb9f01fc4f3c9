"""Intervals and tests over objects: per-object values first (seeds of one object are not independent).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> base = rng.normal(0.5, 0.1, 60)
>>> r = paired(base + 0.05 + rng.normal(0, 0.02, 60), base)
>>> round(r.diff, 2), r.lo < 0.05 < r.hi, r.p < 1e-6, r.n
(0.05, True, True, 60)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Paired", "mean_ci", "paired", "paired_bootstrap_ci", "wilcoxon_p"]

#: Bootstrap resamples; the generator is seeded, so tables are reproducible.
RESAMPLES = 4000


def _clean(values: Sequence[float] | np.ndarray) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    return a[np.isfinite(a)]


def mean_ci(values: Sequence[float] | np.ndarray) -> tuple[float, float, int]:
    """Mean, 95% half-width (normal approximation, ``1.96 s / sqrt(n)``) and count of the finite values.

    >>> [round(x, 4) for x in mean_ci([1.0, 2.0, 3.0, float("nan")])]
    [2.0, 1.1316, 3]
    """
    a = _clean(values)
    if len(a) == 0:
        return math.nan, math.nan, 0
    half = 1.96 * float(a.std(ddof=1)) / math.sqrt(len(a)) if len(a) > 1 else math.nan
    return float(a.mean()), half, len(a)


def paired_bootstrap_ci(diffs: Sequence[float] | np.ndarray, *, level: float = 0.95, resamples: int = RESAMPLES,
                        seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-object differences (objects resampled with replacement)."""
    d = _clean(diffs)
    if len(d) == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


def wilcoxon_p(diffs: Sequence[float] | np.ndarray) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test that the differences are centred on 0 (1.0 if all are 0)."""
    from scipy.stats import wilcoxon

    d = _clean(diffs)
    if len(d) == 0:
        return math.nan
    if not np.any(d != 0):
        return 1.0
    return float(wilcoxon(d, zero_method="zsplit").pvalue)


@dataclass(frozen=True)
class Paired:
    """A paired comparison: mean difference, its 95% bootstrap interval ``[lo, hi]``, Wilcoxon p, objects."""

    diff: float
    lo: float
    hi: float
    p: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2


def paired(values: Sequence[float] | np.ndarray, baseline: Sequence[float] | np.ndarray) -> Paired:
    """Compare per-object ``values`` with ``baseline`` (same objects, same order); pairs with a NaN are dropped."""
    a, b = np.asarray(values, dtype=float), np.asarray(baseline, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same objects: got {a.shape} and {b.shape}")
    d = (a - b)[np.isfinite(a) & np.isfinite(b)]
    lo, hi = paired_bootstrap_ci(d)
    return Paired(float(d.mean()) if len(d) else math.nan, lo, hi, wilcoxon_p(d), len(d))
