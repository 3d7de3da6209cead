"""Bursts of launches: each timed from its launch to its exit, stragglers killed at the timeout."""

from __future__ import annotations

import os
import time

import pytest

from harness.errors import EnvironmentError_
from harness.platforms.burst import Burst, burst_of_children, exit_times, reap


def spawn(*argv: str) -> tuple[int, float]:
    launched = time.perf_counter()
    return os.posix_spawn(argv[0], list(argv), os.environ), launched


def test_each_launch_is_timed_to_its_own_exit() -> None:
    slow, slow_t = spawn("/bin/sleep", "0.3")
    fast, fast_t = spawn("/bin/true")
    burst = burst_of_children({slow: slow_t, fast: fast_t}, "test")
    per = dict(zip((slow, fast), burst.per_launch_s, strict=True))
    assert per[slow] >= 0.3 > per[fast]
    assert burst.total_s >= per[slow]
    with pytest.raises(ChildProcessError):
        os.waitpid(slow, os.WNOHANG)  # reaped


def test_a_failing_launch_fails_the_burst() -> None:
    bad, bad_t = spawn("/bin/sh", "-c", "exit 4")
    with pytest.raises(EnvironmentError_, match=r"1 of 1 burst launches failed \(exit 4\)"):
        burst_of_children({bad: bad_t}, "test")


def test_stragglers_are_killed_at_the_timeout() -> None:
    hung, hung_t = spawn("/bin/sleep", "30")
    start = time.monotonic()
    with pytest.raises(EnvironmentError_, match="still running after"):
        exit_times({hung: hung_t}, timeout_s=0.2)
    assert reap([hung]) == {hung: -9}
    assert time.monotonic() - start < 5


def test_metrics_of_a_burst() -> None:
    metrics = Burst(0.5, (0.1, 0.2, 0.4, 0.3)).metrics()
    assert metrics == {
        "total_s": 0.5,
        "per_launch_p50_s": pytest.approx(0.25),
        "per_launch_max_s": 0.4,
        "per_launch_mean_s": pytest.approx(0.25),
        "launches_per_s": 8.0,
    }
