"""The memory and CPU tests of MEASUREMENT.md's table, each written once against the Adapter protocol."""

from __future__ import annotations

import math
import os
import re
import time

from harness.enforcement import requests as rq
from harness.enforcement import verdicts as v
from harness.enforcement.adapters import Adapter
from harness.enforcement.env import Env, last, one, record
from harness.enforcement.jobs import run_jobs, shell
from harness.enforcement.model import FAIL, PASS, Job, Record, not_applicable
from harness.enforcement.requests import MIB, PERIOD_US
from harness.enforcement.sampler import cpu_times, host_busy_cpus, percpu_ns

# ------------------------------------------------------------------ memory


def memory_hard_limit(adapter: Adapter, env: Env) -> list[Record]:
    """64 MiB limit, no swap, 256 MiB touched: OOM kill recorded, peak <= limit."""
    limit = 64 * MIB
    setup = "memory.limit 64 MiB, swap = limit (none); busybox dd touches a 256 MiB buffer"
    job = Job("oom", shell("dd if=/dev/zero of=/dev/null bs=256M count=1"),
              rq.memory_limit(limit),
              columns=("memory_peak_bytes", "memory_oom_kill"),
              effective_files=("memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "memory.max", "memory.swap.max"))  # fmt: skip
    done = one(adapter, env, job)
    peak, kills = last(done.series, "memory_peak_bytes"), last(done.series, "memory_oom_kill")
    verdict, reason = v.oom_verdict(kills, peak, limit)
    return [record("memory.hard_limit", adapter, done, verdict=verdict, reason=reason, requested=64.0,
                    measured=None if peak is None else peak / MIB, unit="MiB peak", tolerance_pct=0.0,
                    details={"oom_kill": kills, "exit_code": done.exit_code}, setup=setup)]  # fmt: skip


def hold(adapter: Adapter, env: Env, test: str, size_mib: int, tolerance_pct: float) -> Record:
    # dd fills its bs-sized buffer from /dev/zero, then blocks writing it into a pipe nobody
    # reads: the buffer stays resident for the 3 s of `sleep`, between two idle seconds.
    setup = f"busybox dd holds a {size_mib} MiB anonymous buffer for 3 s; usage plateau minus the baseline before it"
    job = Job(f"hold{size_mib}", shell(f"sleep 1; dd if=/dev/zero bs={size_mib}M count=1 | sleep 3; sleep 1"),
              effective_files=("memory.limit_in_bytes", "memory.max"))  # fmt: skip
    done = one(adapter, env, job)
    held = v.hold_delta([x for x in done.series["memory_bytes"] if x is not None])
    if held is None:
        return record(test, adapter, done, verdict=FAIL, reason="memory usage never rose to a plateau",
                       requested=float(size_mib), unit="MiB", tolerance_pct=tolerance_pct, setup=setup)  # fmt: skip
    delta, base, top = held
    verdict, reason = v.tolerance_verdict(
        "memory held", delta / MIB, size_mib, tolerance_pct, "MiB"
    )
    return record(test, adapter, done, verdict=verdict, reason=reason, requested=float(size_mib),
                   measured=delta / MIB, unit="MiB", tolerance_pct=tolerance_pct,
                   details={"baseline_bytes": base, "plateau_bytes": top}, setup=setup)  # fmt: skip


def memory_accounting(adapter: Adapter, env: Env) -> list[Record]:
    """50 MiB of anonymous memory: the cgroup's usage grows by it within 6 %."""
    return [hold(adapter, env, "memory.accounting", 50, 6.0)]


def memory_high(adapter: Adapter, env: Env) -> list[Record]:
    """memory.high 32 MiB, a page-cache workload: usage held within 10 % of high, no OOM."""
    setup = "memory.high 32 MiB (linux.resources.unified); dd writes then cat reads a 128 MiB file"
    reason = adapter.not_applicable("memory.high")
    if reason:
        return [not_applicable("memory.high", adapter.name, reason, setup)]
    high = 32 * MIB
    job = Job("high", shell("dd if=/dev/zero of=/var/tmp/f bs=1M count=128 && cat /var/tmp/f > /dev/null; rm -f /var/tmp/f"),
              rq.memory_high(high),
              columns=("memory_high_events", "memory_oom_kill"), effective_files=("memory.high",))  # fmt: skip
    done = one(adapter, env, job)
    mem = [x for x in done.series["memory_bytes"] if x is not None]
    near = [x for x in mem if x >= 0.5 * high] or mem or [0]
    usage = sorted(near)[len(near) // 2]
    verdict, why = v.memory_high_verdict(usage, high, 10.0, last(done.series, "memory_oom_kill"),
                                         last(done.series, "memory_high_events"))  # fmt: skip
    return [record("memory.high", adapter, done, verdict=verdict, reason=why, requested=32.0,
                    measured=usage / MIB, unit="MiB", tolerance_pct=10.0, setup=setup)]  # fmt: skip


# ------------------------------------------------------------------ cpu


def cpu_quota_at(adapter: Adapter, env: Env, cpus: float) -> Record:
    """A quota of cpus CPUs against a hog of one worker more than that: used within 5 %, throttled."""
    test = f"cpu.quota.{cpus:g}"
    duration = env.durations.cpu_quota_s
    workers = min(os.cpu_count() or 1, math.ceil(cpus) + 1)
    setup = f"cpu.cfs_quota_us {int(cpus * PERIOD_US)} / period {PERIOD_US}, cpu.shares {rq.MAX_SHARES} (no cap: against neighbours); stress-ng --cpu {workers} for {duration:g} s; first 1 s excluded"  # fmt: skip
    job = Job(f"quota{cpus:g}", shell(f"stress-ng --cpu {workers} -t {duration:g}s"),
              rq.cpu_quota(cpus),
              columns=("cpu_nr_throttled", "host_busy_j", "host_total_j"),
              effective_files=("cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.max", "cpu.shares", "cpu.weight"))  # fmt: skip
    done = run_jobs(adapter, [(job, env.instance(job.name))], extra=_host_jiffies)[0]
    rate = v.steady_rate(done.series["t_s"], done.series["cpu_ns"], 0.1e9, 1.0, PERIOD_US / 1e6)
    if rate is None:
        return record(test, adapter, done, verdict=FAIL, reason="the load used no CPU", requested=cpus,
                       unit="CPUs", tolerance_pct=5.0, setup=setup)  # fmt: skip
    used = rate[0] / 1e9
    verdict, reason = v.cpu_quota_verdict(used, cpus, 5.0, last(done.series, "cpu_nr_throttled"))
    # What the rest of the host used over the same window: the whole host's busy CPUs minus ours.
    t = done.series["t_s"]
    at = [(v.value_at(t, done.series[c], when)) for c in ("host_busy_j", "host_total_j") for when in rate[1:]]  # fmt: skip
    busy = host_busy_cpus((int(at[0]), int(at[2])), (int(at[1]), int(at[3])))
    others = max(0.0, busy - used)
    note = v.contention_note(others, os.cpu_count() or 1, cpus, verdict)
    reason += note
    return record(test, adapter, done, verdict=verdict, reason=reason, requested=cpus, measured=used,
                   unit="CPUs", tolerance_pct=5.0, details={"window_s": [rate[1], rate[2]], "host_other_cpus": others, "host_limited": bool(note)}, setup=setup)  # fmt: skip


def _host_jiffies(_: object) -> dict[str, int]:
    busy, total = cpu_times()
    return {"host_busy_j": busy, "host_total_j": total}


def cpu_quota(adapter: Adapter, env: Env) -> list[Record]:
    """Quota of 0.5 and of 1.5 CPUs against a hog: CPU used within 5 %, throttled."""
    return [cpu_quota_retried(adapter, env, 0.5), cpu_quota_retried(adapter, env, 1.5)]


HOST_RETRIES = 2  # more attempts when the rest of the host left too little CPU to reach the quota


def cpu_quota_retried(adapter: Adapter, env: Env, cpus: float) -> Record:
    """cpu_quota_at, measured again (after a pause) while a failure is the host's, not the cgroup's."""
    attempt = cpu_quota_at(adapter, env, cpus)
    for n in range(HOST_RETRIES):
        if not attempt.details.get("host_limited"):
            break
        time.sleep(2.0)
        attempt = cpu_quota_at(adapter, env, cpus)
        attempt.details["attempt"] = n + 2
    return attempt


def cpu_weight(adapter: Adapter, env: Env) -> list[Record]:
    """Three cgroups, shares 1024:2048:3072 (v2 weights from them), one pinned CPU, at once."""
    duration = env.durations.cpu_weight_s
    cpu = str(max(os.sched_getaffinity(0)))
    setup = f"cpu.shares 1024:2048:3072, all on cpuset {cpu}, stress-ng --cpu 1 each for {duration:g} s at once; first 1 s excluded"  # fmt: skip
    jobs = [(Job(f"weight{k}", shell(f"stress-ng --cpu 1 -t {duration:g}s"),
                 rq.cpu_shares(1024 * k, cpu),
                 effective_files=("cpu.shares", "cpu.weight", "cpuset.cpus")),
             env.instance(f"weight{k}")) for k in (1, 2, 3)]  # fmt: skip
    done = run_jobs(adapter, jobs)
    weights = [
        _effective_weight(d.effective, 1024 * k) for d, k in zip(done, (1, 2, 3), strict=True)
    ]
    windows = [v.active_window(d.series["t_s"], d.series["cpu_ns"], 0.05e9) for d in done]
    if any(w is None for w in windows):
        return [record("cpu.weight", adapter, done[0], verdict=FAIL, reason="a competing load never ran",
                        unit="% of the CPU", tolerance_pct=10.0, setup=setup)]  # fmt: skip
    start = max(d.series["t_s"][w[0]] for d, w in zip(done, windows, strict=True) if w) + 1.0
    end = min(d.series["t_s"][w[1] - 1] for d, w in zip(done, windows, strict=True) if w)
    if end - start < 1.0:
        return [record("cpu.weight", adapter, done[0], verdict=FAIL, unit="% of the CPU", tolerance_pct=10.0,
                       reason=f"the three loads ran together for only {max(0.0, end - start + 1.0):.2f} s", setup=setup)]  # fmt: skip
    used = [v.value_at(d.series["t_s"], d.series["cpu_ns"], end) - v.value_at(d.series["t_s"], d.series["cpu_ns"], start) for d in done]  # fmt: skip
    _, reason, shares = v.weight_verdict(used, weights, 10.0)
    records = []
    for d, w, share in zip(done, weights, shares or [0.0] * 3, strict=True):
        expected = w / sum(weights)
        ok = v.within(share, expected, 10.0)
        records.append(record(f"cpu.weight.{w}", adapter, d, verdict=PASS if ok else FAIL, reason=reason,
                               requested=expected * 100, measured=share * 100, unit="% of the CPU",
                               tolerance_pct=10.0, details={"window_s": [start, end]}, setup=setup))  # fmt: skip
    return records


def _effective_weight(effective: dict[str, str], shares: int) -> int:
    """The weight the kernel holds: cpu.shares (v1) or cpu.weight (v2); the request if unread."""
    for name in ("cpu.shares", "cpu.weight"):
        if effective.get(name, "").isdigit():
            return int(effective[name])
    return shares


def cpuset(adapter: Adapter, env: Env) -> list[Record]:
    """cpus = 1: the affinity seen inside is {1} and >= 99 % of the CPU time lands on CPU 1."""
    duration = env.durations.cpuset_s
    wanted = max(os.sched_getaffinity(0))
    setup = (
        f"cpuset.cpus {wanted}; Cpus_allowed_list read inside, stress-ng --cpu 2 for {duration:g} s"
    )
    job = Job("cpuset", shell(f"grep Cpus_allowed_list /proc/self/status; stress-ng --cpu 2 -t {duration:g}s"),
              rq.cpuset(str(wanted)), columns=("percpu_ns",), effective_files=("cpuset.cpus",))  # fmt: skip
    done = run_jobs(
        adapter, [(job, env.instance("cpuset"))], extra=lambda m: {"percpu_ns": percpu_ns(m)}
    )[0]
    match = re.search(r"Cpus_allowed_list:\s*(\S+)", done.stdout)
    affinity = _cpu_list(match.group(1)) if match else None
    percpu = [p for p in done.series.get("percpu_ns", []) if p]
    delta = [b - a for a, b in zip(percpu[0], percpu[-1], strict=True)] if len(percpu) > 1 else None
    verdict, reason, share = v.cpuset_verdict(affinity, {wanted}, delta, 0.99)
    return [record("cpuset", adapter, done, verdict=verdict, reason=reason, requested=100.0,
                    measured=None if share is None else share * 100, unit=f"% of CPU time on CPU {wanted}",
                    tolerance_pct=1.0, details={"affinity_inside": sorted(affinity or ())}, setup=setup)]  # fmt: skip


def _cpu_list(text: str) -> set[int]:
    cpus: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus
