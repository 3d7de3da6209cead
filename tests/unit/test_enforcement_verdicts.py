"""Verdict logic on synthetic series: enforced limits pass, limits that are not enforced fail."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.enforcement import verdicts as v
from harness.enforcement.model import FAIL, PASS, Record, check_record

DT = 0.05


def cpu_series(
    rate_cpus: float, run_s: float, idle_s: float = 0.5
) -> tuple[list[float], list[float]]:
    """A cpu_ns counter: idle, then rising at rate_cpus for run_s, then idle again."""
    t, ns, used = [], [], 0.0
    steps = int((idle_s * 2 + run_s) / DT)
    for i in range(steps + 1):
        now = i * DT
        if idle_s < now <= idle_s + run_s:
            used += rate_cpus * DT * 1e9
        t.append(round(now, 4))
        ns.append(used)
    return t, ns


def test_steady_rate_measures_the_quota_and_excludes_ramp_up() -> None:
    t, ns = cpu_series(0.5, 5.0)
    rate = v.steady_rate(t, ns, 0.1e9, 1.0)
    assert rate is not None
    assert rate[0] / 1e9 == pytest.approx(0.5, rel=1e-6)
    assert rate[1] == pytest.approx(1.5, abs=DT)  # the load began at 0.5 s, plus 1 s excluded


def cfs_series(
    quota_s: float, period_s: float, run_s: float, phase_s: float
) -> tuple[list[float], list[float]]:
    """A cpu_ns counter under a CFS quota: each period one CPU runs for quota_s, then is throttled.

    Sampled every DT from 0; the load starts at 0.5 s + phase_s and runs for run_s.
    """
    start = 0.5 + phase_s
    t, ns = [], []
    for i in range(int((run_s + 1.5) / DT) + 1):
        now = i * DT
        elapsed = min(max(now - start, 0.0), run_s)
        whole, part = divmod(elapsed, period_s)
        ns.append((whole * quota_s + min(part, quota_s)) * 1e9)
        t.append(round(now, 4))
    return t, ns


@pytest.mark.parametrize("phase_s", [0.0, 0.01, 0.025, 0.04])
def test_steady_rate_over_whole_cfs_periods_does_not_depend_on_the_phase(phase_s: float) -> None:
    # The integration test's load: 2.5 s, 1 s excluded, so about one second is measured.
    t, ns = cfs_series(0.05, 0.1, 2.5, phase_s)
    naive = v.steady_rate(t, ns, 0.1e9, 1.0)
    aligned = v.steady_rate(t, ns, 0.1e9, 1.0, period_s=0.1)
    assert naive is not None and aligned is not None
    assert aligned[0] / 1e9 == pytest.approx(0.5, rel=0.005)
    span = aligned[2] - aligned[1]
    assert span >= 0.9 and abs(span / 0.1 - round(span / 0.1)) < 1e-6
    if phase_s in (0.01, 0.04):  # here the window of the fraction of a period, before this fix,
        assert abs(naive[0] / 1e9 - 0.5) > 0.01  # started or ended mid-run: 2 % off


def test_cpu_quota_enforced_passes_and_unenforced_fails() -> None:
    t, ns = cpu_series(0.5, 5.0)
    rate = v.steady_rate(t, ns, 0.1e9, 1.0)
    assert rate is not None
    assert v.cpu_quota_verdict(rate[0] / 1e9, 0.5, 5.0, 25)[0] == PASS
    # The quota not applied: the hog gets a whole CPU.
    t, ns = cpu_series(1.0, 5.0)
    rate = v.steady_rate(t, ns, 0.1e9, 1.0)
    assert rate is not None
    verdict, reason = v.cpu_quota_verdict(rate[0] / 1e9, 0.5, 5.0, 0)
    assert verdict == FAIL and "+100.0 %" in reason
    # Right amount but never throttled: the limit did not do it (the load was lighter).
    assert v.cpu_quota_verdict(0.5, 0.5, 5.0, 0)[0] == FAIL
    # Just outside the tolerance.
    assert v.cpu_quota_verdict(0.53, 0.5, 5.0, 10)[0] == FAIL


def test_steady_rate_of_a_load_that_never_ran_is_none() -> None:
    t, ns = cpu_series(0.0, 5.0)
    assert v.steady_rate(t, ns, 0.1e9, 1.0) is None


def test_io_rate_unthrottled_fails() -> None:
    mib = 1 << 20
    t, done = cpu_series(10 * mib / 1e9, 5.0)  # a counter rising at 10 MiB/s
    rate = v.steady_rate(t, done, 0.5 * mib, 1.0)
    assert rate is not None
    assert v.tolerance_verdict("read", rate[0] / mib, 10.0, 10.0, "MiB/s")[0] == PASS
    t, done = cpu_series(80 * mib / 1e9, 5.0)
    rate = v.steady_rate(t, done, 0.5 * mib, 1.0)
    assert rate is not None
    assert v.tolerance_verdict("read", rate[0] / mib, 10.0, 10.0, "MiB/s")[0] == FAIL


def test_weights_1_2_3_pass_and_equal_shares_fail() -> None:
    verdict, _, shares = v.weight_verdict([1e9, 2e9, 3e9], [1024, 2048, 3072], 10.0)
    assert verdict == PASS and shares == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    verdict, reason, _ = v.weight_verdict([2e9, 2e9, 2e9], [1024, 2048, 3072], 10.0)
    assert verdict == FAIL and "weight 1024" in reason
    assert v.weight_verdict([0, 0, 0], [1, 2, 3], 10.0)[0] == FAIL


def test_oom_verdict() -> None:
    limit = 64 << 20
    assert v.oom_verdict(1, limit, limit)[0] == PASS
    assert v.oom_verdict(0, limit, limit)[0] == FAIL  # no kill: the limit did not bite
    assert v.oom_verdict(None, 200 << 20, limit)[0] == FAIL
    assert v.oom_verdict(1, limit + 4096, limit)[0] == FAIL  # usage went above the limit


def test_pids_verdict() -> None:
    assert v.pids_verdict(32, 32, True, 2)[0] == PASS
    assert v.pids_verdict(65, 32, False, 2)[0] == FAIL  # not enforced: all 64 forks made it
    assert v.pids_verdict(32, 32, False, 2)[0] == FAIL  # no EAGAIN seen
    assert v.pids_verdict(10, 32, True, 2)[0] == FAIL  # refused far below the limit
    assert v.pids_verdict(None, 32, True, 2)[0] == FAIL


def test_hold_delta_finds_baseline_and_plateau() -> None:
    mib = 1 << 20
    base, held = 3 * mib, 50 * mib
    series = [base] * 20 + [base + held * f for f in (0.3, 0.7)] + [base + held] * 60 + [base] * 20
    delta = v.hold_delta(series)
    assert delta is not None and delta[0] == pytest.approx(held)
    assert v.tolerance_verdict("held", delta[0] / mib, 50, 6.0, "MiB")[0] == PASS
    # Memory not charged to the cgroup: usage never rises.
    assert v.hold_delta([base] * 50) is None
    # Charged twice over (accounting wrong): fails.
    doubled = [base] * 20 + [base + 2 * held] * 60
    delta = v.hold_delta(doubled)
    assert (
        delta is not None and v.tolerance_verdict("held", delta[0] / mib, 50, 6.0, "MiB")[0] == FAIL
    )


def test_cpuset_verdict() -> None:
    assert v.cpuset_verdict({1}, {1}, [0, 2_000_000_000], 0.99)[0] == PASS
    assert v.cpuset_verdict({0, 1}, {1}, [1, 1], 0.99)[0] == FAIL  # affinity not restricted
    verdict, _, share = v.cpuset_verdict({1}, {1}, [1_000_000_000, 1_000_000_000], 0.99)
    assert verdict == FAIL and share == pytest.approx(0.5)  # half the time on CPU 0


def test_freeze_memory_high_and_contention() -> None:
    assert v.frozen_verdict(0, 1.0, 0.01)[0] == PASS
    assert v.frozen_verdict(0.9e9, 1.0, 0.01)[0] == FAIL  # kept running while "frozen"
    high = 32 << 20
    assert v.memory_high_verdict(high * 1.02, high, 10.0, 0, 120)[0] == PASS
    assert v.memory_high_verdict(high * 3, high, 10.0, 0, 0)[0] == FAIL  # not throttled
    assert v.memory_high_verdict(high, high, 10.0, 1, 50)[0] == FAIL  # OOM instead of throttle
    assert v.contention_note(1.7, 2, 1.5, FAIL).startswith("; the host was busy")
    assert v.contention_note(0.1, 2, 1.5, FAIL) == ""


def test_value_at_interpolates() -> None:
    assert v.value_at([0, 1, 2], [0, 10, 30], 1.5) == 20
    assert v.value_at([0, 1, 2], [0, 10, 30], -1) == 0
    assert v.value_at([0, 1, 2], [0, 10, 30], 5) == 30


def test_record_refuses_an_unknown_verdict_and_checks_loaded_ones() -> None:
    with pytest.raises(ValueError, match="verdict 'ok'"):
        Record(test="pids", platform="bare", verdict="ok", reason="")
    good = Record(test="pids", platform="bare", verdict=PASS, reason="r").to_json()
    assert check_record(good, "x") == good
    with pytest.raises(ValueError, match="verdict 'maybe'"):
        check_record({**good, "verdict": "maybe"}, "x")
    with pytest.raises(ValueError, match="has no 'series'"):
        check_record({k: val for k, val in good.items() if k != "series"}, "x")


def test_hold_delta_leaves_the_allocation_ramp_out_of_the_baseline() -> None:
    # As sampled on runc: idle at 0.5 MiB, dd starting (3.7), half-way (30.9), then the plateau.
    series = [2.4] + [0.5] * 18 + [3.7, 30.9] + [50.9] * 50 + [0.6] * 20
    delta = v.hold_delta(series)
    assert delta is not None and delta[1] == 0.5 and delta[0] == pytest.approx(50.4)


class _Paths:
    def __init__(self, paths: dict[str, str]) -> None:
        self._paths = paths

    def paths(self) -> dict[str, str]:
        return self._paths


def test_io_counts_only_the_throttled_device_v1_and_v2(tmp_path: Path) -> None:
    """A loop device's IO also shows on its backing disk in the same cgroup: count the loop only."""
    from harness.enforcement.suite_tasks_io import device_io

    (tmp_path / "blkio").mkdir()
    (tmp_path / "blkio" / "blkio.throttle.io_service_bytes").write_text(
        "7:0 Read 52428800\n7:0 Write 0\n7:0 Total 52428800\n"
        "254:0 Read 52428800\n254:0 Write 4096\n254:0 Total 52432896\nTotal 104861696\n"
    )
    v1 = _Paths({"blkio": str(tmp_path / "blkio"), "memory": str(tmp_path / "memory")})
    assert device_io(v1, "7:0") == {"io_read_bytes": 52428800, "io_write_bytes": 0}  # type: ignore[arg-type]
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "io.stat").write_text(
        "254:0 rbytes=4096 wbytes=52428800 rios=1 wios=800 dbytes=0 dios=0\n"
        "7:0 rbytes=0 wbytes=52428800 rios=0 wios=800 dbytes=0 dios=0\n"
    )
    v2 = _Paths({"": str(tmp_path / "v2")})
    assert device_io(v2, "7:0") == {"io_read_bytes": 0, "io_write_bytes": 52428800}  # type: ignore[arg-type]
    # The drivers' own totals still count every device.
    from harness.runtime.cgroups.v1 import BlkioGroup

    out: dict[str, int] = {}
    BlkioGroup().stat(str(tmp_path / "blkio"), out)
    assert out["io_read_bytes"] == 2 * 52428800
