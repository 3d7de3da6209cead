"""Statistics used by benchmarks and reports: percentiles and paired bootstrap intervals.

MEASUREMENT.md: startup samples are cold starts; report p50/p90/p99 and the
ratio of p50s with a bootstrap interval, resampling whole blocks so that the
pairing of platforms within a block is kept.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

BOOTSTRAP_RESAMPLES = 10_000


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between order statistics."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Ratio:
    """A ratio estimate with its confidence interval."""

    value: float
    low: float
    high: float
    confidence: float

    def __str__(self) -> str:
        return f"{self.value:.3f}x [{self.low:.3f}, {self.high:.3f}]"


def paired_median_ratio(
    numerator: Sequence[float],
    denominator: Sequence[float],
    confidence: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> Ratio:
    """median(numerator) / median(denominator), percentile bootstrap over paired blocks.

    numerator[i] and denominator[i] come from the same block; a resample draws
    block indices with replacement, keeping each pair together.
    """
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError("paired samples must be non-empty and of equal length")
    rng = random.Random(seed)
    n = len(numerator)
    estimates = []
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        estimates.append(
            statistics.median(numerator[i] for i in idx)
            / statistics.median(denominator[i] for i in idx)
        )
    tail = (1.0 - confidence) / 2.0 * 100.0
    value = statistics.median(numerator) / statistics.median(denominator)
    return Ratio(
        value, percentile(estimates, tail), percentile(estimates, 100.0 - tail), confidence
    )
