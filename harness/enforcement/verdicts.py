"""Verdict logic as pure functions: sampled series in, measured values and pass/fail out.

Tolerances are a plain percentage of the requested value (MEASUREMENT.md,
"Enforcement tolerances"); the kernel selftests' values_close(a, b, err) is
about twice as loose. Nothing here touches the machine, so the unit tests can
feed series in which a limit is *not* enforced and see a fail.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from harness.enforcement.model import FAIL, PASS

Verdict = tuple[str, str]  # (pass | fail, reason)


def within(measured: float, requested: float, tolerance_pct: float) -> bool:
    """|measured - requested| <= tolerance_pct % of requested."""
    return abs(measured - requested) <= abs(requested) * tolerance_pct / 100.0


def deviation_pct(measured: float, requested: float) -> float:
    """How far measured is from requested, in percent of requested (signed)."""
    return (measured - requested) / requested * 100.0 if requested else float("inf")


def active_window(
    t_s: Sequence[float], values: Sequence[float], min_rate: float
) -> tuple[int, int] | None:
    """(a, b): the samples around the steps where the counter rose faster than min_rate per second.

    a is the last sample before the first such step, b the last sample of the
    last one; None when the counter never rose that fast (the load never ran).
    """
    fast = [
        i
        for i in range(1, len(t_s))
        if t_s[i] > t_s[i - 1] and (values[i] - values[i - 1]) / (t_s[i] - t_s[i - 1]) > min_rate
    ]  # the sampler records a sample only once the cgroup's counters are all readable
    if not fast:
        return None
    return fast[0] - 1, fast[-1]


def steady_rate(
    t_s: Sequence[float],
    values: Sequence[float],
    min_rate: float,
    skip_s: float,
    period_s: float | None = None,
) -> tuple[float, float, float] | None:
    """(rate per second, window start, window end) of a counter while its load ran.

    The window starts skip_s after the load started (ramp-up excluded) and ends
    one sample before the last fast step (that step may be the load stopping
    part-way through a sampling interval). None when too little is left.

    period_s: the load runs in on/off cycles of this length (a CFS quota: run
    for the quota, throttled for the rest of the period). The window then spans
    a whole number of periods, as near as the samples allow, ending at one of
    the last PERIOD_END_CHOICES samples: over a fraction of a period the rate
    depends on where in the cycle the window started (over one second, up to
    +/-5 % of a 0.5-CPU quota).
    """
    window = active_window(t_s, values, min_rate)
    if window is None:
        return None
    a, b = window
    end = max(a, b - 1)
    start = next((i for i in range(a, end + 1) if t_s[i] >= t_s[a] + skip_s), end)
    if period_s is not None:
        end = min(
            range(max(start + 2, end - PERIOD_END_CHOICES + 1), end + 1),
            key=lambda j: (_off_period(t_s[j] - t_s[start], period_s), -j),
            default=end,
        )
    if end - start < 2 or t_s[end] <= t_s[start]:
        return None
    rate = (values[end] - values[start]) / (t_s[end] - t_s[start])
    return rate, t_s[start], t_s[end]


PERIOD_END_CHOICES = 4


def _off_period(span_s: float, period_s: float) -> float:
    """How far span_s is from a whole number of periods, in seconds."""
    rest = span_s % period_s
    return min(rest, period_s - rest)


def hold_delta(values: Sequence[float]) -> tuple[float, float, float] | None:
    """(plateau - baseline, baseline, plateau) of a gauge that rises to a plateau and falls back.

    baseline: the median of the samples before the rise (the first sample above
    half-way to the maximum) that stay within 5 % of the way up, so the ramp of
    the allocation is not in it; plateau: the median of the samples from the
    rise on that stay above 90 % of the way up.
    """
    if len(values) < 3:
        return None
    low, high = min(values), max(values)
    if high <= low:
        return None
    rise = next(i for i, v in enumerate(values) if v > low + (high - low) / 2)
    if rise == 0:
        return None
    baseline = statistics.median([v for v in values[:rise] if v <= low + 0.05 * (high - low)])
    top = [v for v in values[rise:] if v >= baseline + 0.9 * (high - baseline)]
    plateau = statistics.median(top)
    return plateau - baseline, baseline, plateau


def tolerance_verdict(
    what: str, measured: float, requested: float, tolerance_pct: float, unit: str
) -> Verdict:
    """pass when measured is within tolerance_pct of requested; the reason gives the numbers."""
    dev = deviation_pct(measured, requested)
    text = (
        f"{what}: measured {measured:.4g} {unit} vs requested {requested:.4g} {unit} "
        f"({dev:+.1f} %, tolerance +/-{tolerance_pct:g} %)"
    )
    return (PASS if within(measured, requested, tolerance_pct) else FAIL), text


def cpu_quota_verdict(
    used_cpus: float, quota_cpus: float, tolerance_pct: float, nr_throttled: int | None
) -> Verdict:
    """CPU quota: CPU used within tolerance of the quota, and the cgroup was throttled."""
    verdict, text = tolerance_verdict("CPU used", used_cpus, quota_cpus, tolerance_pct, "CPUs")
    if not nr_throttled:
        return FAIL, f"{text}; throttled count {nr_throttled} (must be > 0)"
    return verdict, f"{text}; throttled {nr_throttled} periods"


def weight_verdict(
    used_ns: Sequence[float], weights: Sequence[int], tolerance_pct: float
) -> tuple[str, str, list[float]]:
    """CPU weight: each cgroup's share of the CPU time within tolerance of its weight fraction."""
    total_used, total_weight = sum(used_ns), sum(weights)
    if total_used <= 0:
        return FAIL, "no CPU time was used by the competing cgroups", []
    shares = [u / total_used for u in used_ns]
    expected = [w / total_weight for w in weights]
    bad = [i for i, (s, e) in enumerate(zip(shares, expected, strict=True)) if not within(s, e, tolerance_pct)]  # fmt: skip
    text = ", ".join(
        f"weight {w}: {s:.3f} of the CPU (expected {e:.3f}, {deviation_pct(s, e):+.1f} %)"
        for w, s, e in zip(weights, shares, expected, strict=True)
    )
    return (FAIL if bad else PASS), f"{text}; tolerance +/-{tolerance_pct:g} %", shares


def oom_verdict(oom_kills: int | None, peak_bytes: int | None, limit_bytes: int) -> Verdict:
    """Memory hard limit: an OOM kill recorded in the cgroup, and the peak never above the limit."""
    if not oom_kills:
        return FAIL, f"no OOM kill recorded in the cgroup (oom_kill = {oom_kills})"
    if peak_bytes is None:
        return FAIL, "the cgroup reported no peak memory usage"
    if peak_bytes > limit_bytes:
        return FAIL, f"peak {peak_bytes} B is above the limit {limit_bytes} B"
    return PASS, f"{oom_kills} OOM kill(s); peak {peak_bytes / 2**20:.1f} MiB <= limit {limit_bytes / 2**20:.0f} MiB"  # fmt: skip


def pids_verdict(peak_tasks: int | None, limit: int, fork_refused: bool, slack: int) -> Verdict:
    """pids limit: a fork was refused (EAGAIN) and the task count reached, but never passed, the limit.

    slack: how far below the limit the sampled peak may be (the task that hit
    EAGAIN exits at once, and sampling may miss the instant of the peak).
    """
    if peak_tasks is None:
        return FAIL, "the cgroup reported no task count"
    if peak_tasks > limit:
        return FAIL, f"{peak_tasks} tasks in the cgroup, above the limit {limit}"
    if not fork_refused:
        return FAIL, f"no fork failed with EAGAIN (peak {peak_tasks} tasks, limit {limit})"
    if peak_tasks < limit - slack:
        return FAIL, f"fork refused at {peak_tasks} tasks, below the limit {limit} (slack {slack})"
    return PASS, f"fork refused with EAGAIN; peak {peak_tasks} tasks <= limit {limit}"


def cpuset_verdict(
    affinity: set[int] | None, wanted: set[int], percpu_ns: Sequence[int] | None, min_share: float
) -> tuple[str, str, float | None]:
    """cpuset: the affinity seen inside is the cpuset, and the CPU time went to those CPUs."""
    if affinity != wanted:
        return FAIL, f"affinity seen inside {sorted(affinity or ())}, wanted {sorted(wanted)}", None
    if percpu_ns is None:
        return PASS, f"affinity seen inside {sorted(wanted)}; per-CPU time not reported here", None
    total = sum(percpu_ns)
    if total <= 0:
        return FAIL, "no CPU time was used", 0.0
    share = sum(ns for cpu, ns in enumerate(percpu_ns) if cpu in wanted) / total
    verdict = PASS if share >= min_share else FAIL
    return (
        verdict,
        f"affinity seen inside {sorted(wanted)}; {share * 100:.2f} % of the CPU time on "
        f"CPU {','.join(map(str, sorted(wanted)))} (must be >= {min_share * 100:g} %)",
        share,
    )


def frozen_verdict(cpu_ns_while_frozen: float, frozen_s: float, max_cpu_fraction: float) -> Verdict:
    """Freeze: the cgroup used (almost) no CPU while frozen."""
    used = cpu_ns_while_frozen / 1e9 / frozen_s if frozen_s > 0 else float("inf")
    verdict = PASS if used <= max_cpu_fraction else FAIL
    return verdict, f"{used * 100:.3f} % of a CPU while frozen for {frozen_s:.2f} s (must be <= {max_cpu_fraction * 100:g} %)"  # fmt: skip


def memory_high_verdict(
    usage_bytes: float,
    high_bytes: int,
    tolerance_pct: float,
    oom_kills: int | None,
    high_events: int | None,
) -> Verdict:
    """memory.high: usage held near high, with high events and no OOM kill."""
    verdict, text = tolerance_verdict("usage", usage_bytes / 2**20, high_bytes / 2**20, tolerance_pct, "MiB")  # fmt: skip
    if oom_kills:
        return FAIL, f"{text}; {oom_kills} OOM kill(s) (must be 0)"
    if not high_events:
        return FAIL, f"{text}; high events {high_events} (must be > 0)"
    return verdict, f"{text}; {high_events} high events, no OOM kill"


def value_at(t_s: Sequence[float], values: Sequence[float], when: float) -> float:
    """A counter's value at time when, linearly interpolated between samples (clamped at the ends)."""
    if when <= t_s[0]:
        return float(values[0])
    for i in range(1, len(t_s)):
        if t_s[i] >= when:
            span = t_s[i] - t_s[i - 1]
            frac = (when - t_s[i - 1]) / span if span > 0 else 1.0
            return float(values[i - 1] + (values[i] - values[i - 1]) * frac)
    return float(values[-1])


def contention_note(others_cpus: float, host_cpus: int, quota_cpus: float, verdict: str) -> str:
    """For a failed CPU test: whether the rest of the host left too little CPU to reach the quota."""
    left = host_cpus - others_cpus
    if verdict != FAIL or left >= quota_cpus * 0.95:
        return ""
    return (
        f"; the host was busy: other processes used {others_cpus:.2f} of its {host_cpus} CPUs "
        f"meanwhile, leaving {left:.2f}, so the quota could not be reached (the host, not the cgroup)"
    )
