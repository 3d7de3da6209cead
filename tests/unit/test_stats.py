"""Percentiles, bootstrap ratios, overhead ratios with their t cross-check, t quantiles."""

from __future__ import annotations

import math
import random
import statistics
import time

import pytest

from harness.stats import (
    block_median_ratio,
    coefficient_of_variation,
    median_ci,
    overhead_ratio,
    paired_median_ratio,
    percentile,
    t_quantile,
)


def test_percentile_interpolates_between_order_statistics() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([5], 99) == 5
    assert percentile([10, 0, 20], 0) == 0
    assert percentile([10, 0, 20], 100) == 20


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)


def test_ratio_interval_covers_a_known_ratio_and_excludes_one() -> None:
    rng = random.Random(1)
    base = [10 + rng.gauss(0, 0.5) for _ in range(40)]
    slower = [2 * b + rng.gauss(0, 0.5) for b in base]
    ratio = paired_median_ratio(slower, base, resamples=2000)
    assert ratio.low < 2.0 < ratio.high
    assert ratio.low > 1.5
    assert "x [" in str(ratio)


def test_equal_samples_give_an_interval_around_one() -> None:
    rng = random.Random(2)
    a = [10 + rng.gauss(0, 1) for _ in range(40)]
    b = [10 + rng.gauss(0, 1) for _ in range(40)]
    ratio = paired_median_ratio(a, b, resamples=2000)
    assert ratio.low < 1.0 < ratio.high


def test_unpaired_lengths_are_refused() -> None:
    with pytest.raises(ValueError):
        paired_median_ratio([1, 2], [1])


# ---- overhead ratios over paired blocks -----------------------------------------------------


def _centred_blocks(
    ratio: float, blocks: int, noise: float, seed: int
) -> tuple[dict[int, list[float]], dict[int, list[float]]]:
    """Platform and bare values whose per-block log-ratios average exactly log(ratio)."""
    rng = random.Random(seed)
    eps = [rng.gauss(0, noise) for _ in range(blocks)]
    centre = sum(eps) / blocks
    drift = [math.exp(rng.gauss(0, 0.05)) for _ in range(blocks)]  # hits both platforms alike
    bare = {b: [10.0 * drift[b]] for b in range(blocks)}
    platform = {b: [10.0 * drift[b] * ratio * math.exp(eps[b] - centre)] for b in range(blocks)}
    return platform, bare


def test_overhead_ratio_is_the_geometric_mean_of_block_ratios() -> None:
    ratio = overhead_ratio({0: [2.0], 1: [4.0]}, {0: [1.0], 1: [1.0]}, higher_is_better=False)
    assert ratio.value == pytest.approx(math.sqrt(8))
    assert ratio.blocks == 2 and ratio.block_ratios == pytest.approx((2.0, 4.0))


def test_overhead_ratio_takes_the_mean_of_each_block_first() -> None:
    ratio = overhead_ratio({0: [1.0, 3.0], 1: [4.0]}, {0: [1.0], 1: [2.0]}, higher_is_better=False)
    assert ratio.value == pytest.approx(2.0)


@pytest.mark.parametrize("true", [1.0, 1.02, 1.5])
def test_known_ratio_is_estimated_and_inside_its_interval(true: float) -> None:
    platform, bare = _centred_blocks(true, blocks=8, noise=0.01, seed=3)
    ratio = overhead_ratio(platform, bare, higher_is_better=False)
    assert ratio.value == pytest.approx(true, rel=1e-12)
    assert ratio.low is not None and ratio.high is not None
    assert ratio.low < true < ratio.high
    assert ratio.t_low is not None and ratio.t_high is not None
    assert ratio.t_low < true < ratio.t_high
    assert not ratio.disagree and ratio.note == ""
    assert str(ratio) == f"{ratio.value:.3f}x [{ratio.low:.3f}, {ratio.high:.3f}]"


def test_throughput_is_inverted_so_that_above_one_costs_more() -> None:
    rates_bare = {b: [1000.0] for b in range(4)}
    rates_slower = {b: [500.0 + b] for b in range(4)}  # about half the rate: twice the cost
    ratio = overhead_ratio(rates_slower, rates_bare, higher_is_better=True)
    assert 1.9 < ratio.value < 2.0
    as_time = overhead_ratio(rates_slower, rates_bare, higher_is_better=False)
    assert as_time.value == pytest.approx(1 / ratio.value)


def test_only_blocks_present_for_both_platforms_are_paired() -> None:
    bare = {b: [1.0] for b in range(5)}
    platform = {0: [2.0], 1: [2.0], 2: [2.0], 7: [100.0], 3: []}
    ratio = overhead_ratio(platform, bare, higher_is_better=False)
    assert ratio.blocks == 3 and ratio.value == pytest.approx(2.0)


def test_one_paired_block_gives_a_value_without_interval() -> None:
    ratio = overhead_ratio({0: [3.0]}, {0: [2.0], 1: [2.0]}, higher_is_better=False)
    assert ratio.value == pytest.approx(1.5)
    assert (ratio.low, ratio.high, ratio.t_low, ratio.t_high) == (None, None, None, None)
    assert ratio.note == "1 paired block" and "no interval" in str(ratio)


def test_unusable_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="no block"):
        overhead_ratio({0: [1.0]}, {1: [1.0]}, higher_is_better=False)
    with pytest.raises(ValueError, match="positive"):
        overhead_ratio({0: [0.0], 1: [1.0]}, {0: [1.0], 1: [1.0]}, higher_is_better=False)


def test_identical_blocks_have_a_zero_width_interval_and_no_disagreement() -> None:
    ratio = overhead_ratio({b: [2.0] for b in range(5)}, {b: [1.0] for b in range(5)}, False)
    assert ratio.low == ratio.high == pytest.approx(2.0) and not ratio.disagree


def test_t_interval_agrees_with_the_bootstrap_on_clean_data() -> None:
    platform, bare = _centred_blocks(1.1, blocks=20, noise=0.02, seed=5)
    ratio = overhead_ratio(platform, bare, higher_is_better=False)
    assert ratio.low is not None and ratio.high is not None
    assert ratio.t_low is not None and ratio.t_high is not None
    assert not ratio.disagree
    assert abs(math.log(ratio.t_low / ratio.low)) < 0.25 * math.log(ratio.high / ratio.low)


def test_two_spread_blocks_are_flagged_as_too_few() -> None:
    # d = [0, 0.2]: the bootstrap can only give [0, 0.2]; t with 1 df is +/- 12.7 * 0.1.
    ratio = overhead_ratio({0: [1.0], 1: [math.exp(0.2)]}, {0: [1.0], 1: [1.0]}, False)
    assert ratio.disagree and "too few blocks" in ratio.note
    assert ratio.low == pytest.approx(1.0) and ratio.high == pytest.approx(math.exp(0.2))
    assert ratio.t_low is not None and ratio.t_low < 0.35


def test_bootstrap_of_ten_thousand_resamples_over_thirty_blocks_is_fast(
    capsys: pytest.CaptureFixture[str],
) -> None:
    platform, bare = _centred_blocks(1.05, blocks=30, noise=0.01, seed=9)
    start = time.perf_counter()
    ratio = overhead_ratio(platform, bare, higher_is_better=False, resamples=10_000)
    elapsed_s = time.perf_counter() - start
    with capsys.disabled():
        print(f"\noverhead_ratio: 10,000 resamples over 30 blocks in {elapsed_s * 1000:.1f} ms")
    assert ratio.blocks == 30 and ratio.low is not None


# ---- t quantiles -----------------------------------------------------------------------------

# Student t table (two-sided 90/95/99/99.9 %: p = 0.95, 0.975, 0.995, 0.9995).
T_TABLE = {
    (0.975, 1): 12.706, (0.975, 2): 4.303, (0.975, 3): 3.182, (0.975, 4): 2.776,
    (0.975, 7): 2.365, (0.975, 10): 2.228, (0.975, 29): 2.045, (0.975, 120): 1.980,
    (0.95, 3): 2.353, (0.95, 10): 1.812, (0.995, 3): 5.841, (0.995, 10): 3.169,
    (0.995, 30): 2.750, (0.9995, 3): 12.924, (0.9995, 10): 4.587, (0.75, 4): 0.741,
}  # fmt: skip


@pytest.mark.parametrize(("p", "df"), sorted(T_TABLE))
def test_t_quantile_matches_the_table(p: float, df: int) -> None:
    assert t_quantile(p, df) == pytest.approx(T_TABLE[p, df], abs=1.5e-3)
    assert t_quantile(1 - p, df) == pytest.approx(-T_TABLE[p, df], abs=1.5e-3)


def test_t_quantile_tends_to_the_normal_and_refuses_nonsense() -> None:
    assert t_quantile(0.5, 5) == 0.0
    assert t_quantile(0.975, 100_000) == pytest.approx(1.95996, abs=1e-4)
    for p, df in ((0.0, 5), (1.0, 5), (0.9, 0)):
        with pytest.raises(ValueError):
            t_quantile(p, df)


# ---- medians, spread, startup p50 ratios ------------------------------------------------------


def test_median_ci_brackets_the_median() -> None:
    rng = random.Random(4)
    values = [100 + rng.gauss(0, 5) for _ in range(60)]
    estimate = median_ci(values)
    assert estimate.value == pytest.approx(statistics.median(values))
    assert estimate.low is not None and estimate.high is not None
    assert estimate.low < estimate.value < estimate.high and estimate.high - estimate.low < 6
    assert estimate.n == 60
    single = median_ci([7.0])
    assert (single.value, single.low, single.high, str(single)) == (7.0, None, None, "7")
    with pytest.raises(ValueError):
        median_ci([])


def test_coefficient_of_variation() -> None:
    assert coefficient_of_variation([1.0, 2.0, 3.0]) == pytest.approx(0.5)
    assert coefficient_of_variation([-1.0, -2.0, -3.0]) == pytest.approx(0.5)
    assert math.isnan(coefficient_of_variation([4.0]))
    assert math.isnan(coefficient_of_variation([1.0, -1.0]))


def test_block_median_ratio_pools_the_starts_of_each_block() -> None:
    rng = random.Random(6)
    bare = {b: [0.004 * math.exp(rng.gauss(0, 0.1)) for _ in range(5)] for b in range(8)}
    slow = {b: [0.012 * math.exp(rng.gauss(0, 0.1)) for _ in range(7)] for b in range(8)}
    ratio = block_median_ratio(slow, bare)
    pooled = statistics.median(v for vs in slow.values() for v in vs) / statistics.median(
        v for vs in bare.values() for v in vs
    )
    assert ratio.value == pytest.approx(pooled)
    assert ratio.low < 3.0 < ratio.high


def test_block_median_ratio_with_one_block_resamples_the_starts() -> None:
    ratio = block_median_ratio({0: [2.0, 2.2, 1.8, 2.1]}, {0: [1.0, 1.1, 0.9, 1.0]})
    assert ratio.low < ratio.value < ratio.high
    with pytest.raises(ValueError):
        block_median_ratio({0: [1.0]}, {1: [1.0]})
