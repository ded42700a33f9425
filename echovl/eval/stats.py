"""Is a difference between two models real? A paired bootstrap over problems.

Each model's score on a problem is the mean correctness of its ``k`` samples. For models A and B evaluated on the
same problems, the difference on a benchmark is ``mean_i (b_i - a_i)``; on an average over benchmarks (ID avg, OOD
avg) it is the mean of the per-benchmark differences. The bootstrap redraws each benchmark's problems with
replacement (independently per benchmark, the same draw for both models: paired), recomputes the difference, and
reports the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles of the redrawn differences. It
captures both the choice of problems and the sampling noise of each model (a problem's samples travel with it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Interval", "paired_bootstrap"]

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
