"""Is a difference between two models real? A paired bootstrap over problems.

Each model's score on a problem is the mean correctness of its ``k`` samples. For models A and B evaluated on the
same problems, the difference on a benchmark is ``mean_i (b_i - a_i)``; on an average over benchmarks (ID avg, OOD
avg) it is the mean of the per-benchmark differences. The bootstrap redraws each benchmark's problems with
replacement (independently per benchmark, the same draw for both models: paired), recomputes the difference, and
reports the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles of the redrawn differences. It
captures both the choice of problems and the sampling noise of each model (a problem's samples travel with it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Interval", "paired_bootstrap", "paired_t_interval", "student_t_quantile"]

_CHUNK_ELEMENTS = 1 << 22  # indices drawn at a time (32 MB of int64)


@dataclass(frozen=True)
class Interval:
    """A difference ``b - a`` and its bootstrap confidence interval (fractions, not percent)."""

    difference: float
    low: float
    high: float
    confidence: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def paired_bootstrap(
    a: Sequence[np.ndarray],
    b: Sequence[np.ndarray],
    *,
    resamples: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Difference ``b - a`` of the mean over benchmarks of the mean over problems, with a paired bootstrap interval.

    ``a`` and ``b`` hold one array per benchmark of per-problem scores, aligned (entry ``i`` of both is the same
    problem). Benchmarks are resampled independently, each with its own size.
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"need the same number (>= 1) of benchmarks for both models, got {len(a)} and {len(b)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    diffs = []
    for x, y in zip(a, b):
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if x.shape != y.shape or x.ndim != 1 or x.size == 0:
            raise ValueError(f"per-problem scores must be two non-empty aligned vectors, got {x.shape} and {y.shape}")
        diffs.append(y - x)
    rng = np.random.default_rng(seed)
    total = np.zeros(resamples)
    for d in diffs:
        n = d.size
        rows = max(1, _CHUNK_ELEMENTS // n)
        for start in range(0, resamples, rows):
            stop = min(resamples, start + rows)
            total[start:stop] += d[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    total /= len(diffs)
    tail = (1 - confidence) / 2
    low, high = np.quantile(total, [tail, 1 - tail])
    point = float(np.mean([d.mean() for d in diffs]))
    return Interval(point, float(low), float(high), confidence)


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function I_x(a, b), by its continued fraction (modified Lentz)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast below the mean; use the symmetry above it
        return 1.0 - _incomplete_beta(b, a, 1.0 - x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    value = d
    for m in range(1, 300):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            value *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(log_front) * value / a


def student_t_quantile(probability: float, df: int) -> float:
    """The ``probability`` quantile of Student's t distribution with ``df`` degrees of freedom (bisection on its
    CDF, ``1 - I_{df / (df + t^2)}(df / 2, 1 / 2) / 2`` for t > 0)."""
    if not 0 < probability < 1 or df < 1:
        raise ValueError(f"need 0 < probability < 1 and df >= 1, got {probability} and {df}")
    if probability < 0.5:
        return -student_t_quantile(1 - probability, df)

    def cdf(t: float) -> float:
        return 1.0 - 0.5 * _incomplete_beta(df / 2, 0.5, df / (df + t * t))

    low, high = 0.0, 1.0
    while cdf(high) < probability:
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if cdf(middle) < probability else (low, middle)
    return (low + high) / 2


def paired_t_interval(a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95) -> Interval:
    """Mean of the paired differences ``b_i - a_i`` with its Student t confidence interval,
    ``mean +- t_{(1 + confidence) / 2, n - 1} * sd / sqrt(n)``: for a few independent repeats (seeds) of an A/B,
    where the repeat, not the problem, is the unit. With one pair the interval is unknown (NaN)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"need two non-empty aligned vectors, got shapes {a.shape} and {b.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    diffs = b - a
    mean = float(diffs.mean())
    if diffs.size == 1:
        return Interval(mean, math.nan, math.nan, confidence)
    half = student_t_quantile((1 + confidence) / 2, diffs.size - 1) * float(diffs.std(ddof=1)) / math.sqrt(diffs.size)
    return Interval(mean, mean - half, mean + half, confidence)
