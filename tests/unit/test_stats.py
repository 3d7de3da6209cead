"""Percentiles and the paired bootstrap ratio."""

from __future__ import annotations

import random

import pytest

from harness.stats import paired_median_ratio, percentile


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
