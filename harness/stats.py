"""Statistics used by benchmarks and reports: percentiles, overhead ratios and bootstrap intervals.

MEASUREMENT.md: the overhead of a platform P is R = time(P) / time(bare)
(rate(bare) / rate(P) for throughput), estimated as the geometric mean of the
per-block ratios, with a 95 % percentile bootstrap over blocks cross-checked by
a t-interval on the log-ratios. Startup samples are cold starts; report
p50/p90/p99 and the ratio of p50s with a bootstrap interval. Every bootstrap
resamples whole blocks so that the pairing of platforms within a block is kept.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

BOOTSTRAP_RESAMPLES = 10_000
# Cap on the floats one vectorised bootstrap step holds (about 32 MiB); bigger jobs go in chunks.
_CHUNK_FLOATS = 4_000_000

FloatArray = npt.NDArray[np.float64]


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


@dataclass(frozen=True)
class OverheadRatio:
    """Overhead of a platform against bare (R > 1 costs more), with bootstrap and t intervals.

    low/high: percentile bootstrap over blocks; t_low/t_high: t-interval on the
    per-block log-ratios. Both are None with fewer than two paired blocks.
    disagree: the two intervals differ badly, i.e. the run had too few blocks.
    """

    value: float
    low: float | None
    high: float | None
    t_low: float | None
    t_high: float | None
    blocks: int
    disagree: bool
    confidence: float = 0.95
    block_ratios: tuple[float, ...] = ()  # exp(d_b) per paired block, for plots
    note: str = ""

    def __str__(self) -> str:
        if self.low is None or self.high is None:
            return f"{self.value:.3f}x (no interval: {self.note})"
        return f"{self.value:.3f}x [{self.low:.3f}, {self.high:.3f}]"


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its confidence interval (None when there is nothing to resample)."""

    value: float
    low: float | None
    high: float | None
    n: int

    def __str__(self) -> str:
        if self.low is None or self.high is None:
            return f"{self.value:.4g}"
        return f"{self.value:.4g} [{self.low:.4g}, {self.high:.4g}]"


def t_quantile(p: float, df: int) -> float:
    """Student t quantile q with P(T <= q) = p.

    Exact for df 1 and 2; otherwise Hill's algorithm (G. W. Hill, "Algorithm 396:
    Student's t-quantiles", CACM 13(10), 1970, the starting point of R's qt),
    accurate to about 1e-4 relative; the normal quantile comes from the stdlib.
    """
    if not 0.0 < p < 1.0 or df < 1:
        raise ValueError(f"t quantile needs 0 < p < 1 and df >= 1, got p={p}, df={df}")
    if p == 0.5:
        return 0.0
    two_tail = 2.0 * min(p, 1.0 - p)
    n = float(df)
    if df == 1:
        q = 1.0 / math.tan(two_tail * math.pi / 2.0)
    elif df == 2:
        q = math.sqrt(2.0 / (two_tail * (2.0 - two_tail)) - 2.0)
    else:
        a = 1.0 / (n - 0.5)
        b = 48.0 / (a * a)
        c = ((20700.0 * a / b - 98.0) * a - 16.0) * a + 96.36
        d = ((94.5 / (b + c) - 3.0) / b + 1.0) * math.sqrt(a * math.pi / 2.0) * n
        y = (d * two_tail) ** (2.0 / n)
        if y > 0.05 + a:
            # Far tail of the normal: an asymptotic expansion about the normal quantile.
            x = statistics.NormalDist().inv_cdf(0.5 * two_tail)
            y = x * x
            if df < 5:
                c += 0.3 * (n - 4.5) * (x + 0.6)
            c = (((0.05 * d * x - 5.0) * x - 7.0) * x - 2.0) * x + b + c
            y = (((((0.4 * y + 6.3) * y + 36.0) * y + 94.5) / c - y - 3.0) / b + 1.0) * x
            y = math.expm1(a * y * y)
        else:
            y = ((1.0 / (((n + 6.0) / (n * y) - 0.089 * d - 0.822) * (n + 2.0) * 3.0)
                  + 0.5 / (n + 4.0)) * y - 1.0) * (n + 1.0) / (n + 2.0) + 1.0 / y  # fmt: skip
        q = math.sqrt(n * y)
    return q if p > 0.5 else -q


def _resample_means(d: FloatArray, resamples: int, rng: np.random.Generator) -> FloatArray:
    """Means of `resamples` bootstrap resamples of d (with replacement, same size)."""
    idx = rng.integers(0, d.size, size=(resamples, d.size))
    means: FloatArray = d[idx].mean(axis=1)
    return means


def _row_medians(rows: FloatArray) -> FloatArray:
    """Median of each row, ignoring NaN padding (rows have at least one value)."""
    ordered = np.sort(rows, axis=1)  # NaN sorts last
    count = np.sum(~np.isnan(ordered), axis=1)
    low = np.take_along_axis(ordered, ((count - 1) // 2)[:, None], axis=1)[:, 0]
    high = np.take_along_axis(ordered, (count // 2)[:, None], axis=1)[:, 0]
    medians: FloatArray = (low + high) / 2.0
    return medians


def _tails(estimates: FloatArray, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(estimates, [tail, 100.0 - tail])
    return float(low), float(high)


def overhead_ratio(
    platform_values_by_block: Mapping[int, Sequence[float]],
    bare_values_by_block: Mapping[int, Sequence[float]],
    higher_is_better: bool,
    confidence: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> OverheadRatio:
    """R = exp(mean d_b), d_b = log(mean_P,b / mean_bare,b), inverted for throughput metrics.

    Only blocks present (with values) for both platforms are paired. The
    bootstrap and t intervals "disagree" when an endpoint differs, on the log
    scale, by more than half the bootstrap interval's width.
    """
    blocks = sorted(
        b
        for b in platform_values_by_block.keys() & bare_values_by_block.keys()
        if platform_values_by_block[b] and bare_values_by_block[b]
    )
    if not blocks:
        raise ValueError("no block has values for both platforms")
    platform_means = np.array([np.mean(platform_values_by_block[b]) for b in blocks])
    bare_means = np.array([np.mean(bare_values_by_block[b]) for b in blocks])
    if np.any(platform_means <= 0) or np.any(bare_means <= 0):
        raise ValueError("overhead ratios need positive values")
    d: FloatArray = np.log(platform_means / bare_means)
    if higher_is_better:
        d = -d  # rate(bare) / rate(P): R > 1 still means "costs more"
    mean_d = float(d.mean())
    per_block = tuple(float(x) for x in np.exp(d))
    if d.size < 2:
        return OverheadRatio(
            math.exp(mean_d), None, None, None, None, 1, False, confidence, per_block,
            "1 paired block",
        )  # fmt: skip
    boot = _resample_means(d, resamples, np.random.default_rng(seed))
    low, high = _tails(boot, confidence)
    half = t_quantile(0.5 + confidence / 2.0, d.size - 1) * float(d.std(ddof=1)) / math.sqrt(d.size)
    t_low, t_high = mean_d - half, mean_d + half
    slack = 0.5 * (high - low) + 1e-12  # identical blocks: both widths are zero, no disagreement
    disagree = abs(t_low - low) > slack or abs(t_high - high) > slack
    return OverheadRatio(
        value=math.exp(mean_d),
        low=math.exp(low),
        high=math.exp(high),
        t_low=math.exp(t_low),
        t_high=math.exp(t_high),
        blocks=int(d.size),
        disagree=disagree,
        confidence=confidence,
        block_ratios=per_block,
        note="too few blocks: bootstrap and t intervals disagree" if disagree else "",
    )


def median_ci(
    values: Sequence[float],
    confidence: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> Estimate:
    """Median with a percentile bootstrap interval (samples treated as independent)."""
    if not values:
        raise ValueError("median of no values")
    data = np.asarray(values, dtype=np.float64)
    if data.size < 2:
        return Estimate(float(data[0]), None, None, 1)
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_FLOATS // data.size)
    parts = []
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, data.size, size=(min(chunk, resamples - start), data.size))
        parts.append(np.median(data[idx], axis=1))
    low, high = _tails(np.concatenate(parts), confidence)
    return Estimate(float(np.median(data)), low, high, int(data.size))


def coefficient_of_variation(values: Sequence[float]) -> float:
    """Sample standard deviation over |mean|; NaN for fewer than two values or a zero mean."""
    if len(values) < 2:
        return math.nan
    mean = statistics.fmean(values)
    return statistics.stdev(values) / abs(mean) if mean else math.nan


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
    return block_median_ratio(
        {i: [v] for i, v in enumerate(numerator)},
        {i: [v] for i, v in enumerate(denominator)},
        confidence,
        resamples,
        seed,
    )


def block_median_ratio(
    numerator_by_block: Mapping[int, Sequence[float]],
    denominator_by_block: Mapping[int, Sequence[float]],
    confidence: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> Ratio:
    """Ratio of the medians of all samples (e.g. p50 of cold starts), bootstrap over paired blocks.

    A resample draws blocks with replacement and pools their samples on each
    side. With a single paired block there is nothing to resample between
    blocks, so the samples within it are resampled instead (independently per side).
    """
    blocks = sorted(
        b
        for b in numerator_by_block.keys() & denominator_by_block.keys()
        if numerator_by_block[b] and denominator_by_block[b]
    )
    if not blocks:
        raise ValueError("no block has values for both sides")
    num = [list(numerator_by_block[b]) for b in blocks]
    den = [list(denominator_by_block[b]) for b in blocks]
    value = statistics.median(v for vs in num for v in vs) / statistics.median(
        v for vs in den for v in vs
    )
    rng = np.random.default_rng(seed)
    if len(blocks) == 1:
        num, den = [[v] for v in num[0]], [[v] for v in den[0]]
        top = _pooled_medians(num, resamples, rng)
        bottom = _pooled_medians(den, resamples, rng)
    else:
        # The same block draw on both sides: this is what keeps the pairing.
        draws = rng.integers(0, len(blocks), size=(resamples, len(blocks)))
        top, bottom = _pooled_medians(num, draws, rng), _pooled_medians(den, draws, rng)
    low, high = _tails(top / bottom, confidence)
    return Ratio(value, low, high, confidence)


def _pooled_medians(
    groups: list[list[float]], draws: int | npt.NDArray[np.int64], rng: np.random.Generator
) -> FloatArray:
    """Median of the pooled samples of each row of group draws (an int: draw that many rows)."""
    if isinstance(draws, int):
        draws = rng.integers(0, len(groups), size=(draws, len(groups)))
    width = max(len(g) for g in groups)
    padded = np.full((len(groups), width), np.nan)
    for i, group in enumerate(groups):
        padded[i, : len(group)] = group
    chunk = max(1, _CHUNK_FLOATS // (draws.shape[1] * width))
    parts = [
        _row_medians(padded[draws[start : start + chunk]].reshape(-1, draws.shape[1] * width))
        for start in range(0, draws.shape[0], chunk)
    ]
    return np.concatenate(parts)
