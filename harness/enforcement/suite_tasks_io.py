"""The pids, IO, monitoring, freeze and kill tests of MEASUREMENT.md's table."""

from __future__ import annotations

import os
import re
import time

from harness.enforcement import requests as rq
from harness.enforcement import verdicts as v
from harness.enforcement.adapters import IO_DEVICE, Adapter, Launched
from harness.enforcement.env import Env, one, record
from harness.enforcement.jobs import run_jobs, shell
from harness.enforcement.model import FAIL, PASS, Job, Record, not_applicable
from harness.enforcement.sampler import Sampler
from harness.enforcement.vm_cgroup import VmCgroup
from harness.runtime.cgroups.base import CgroupManager
from harness.runtime.cgroups.fs import read_optional
from harness.runtime.cgroups.v1 import read_write_totals
from harness.runtime.cgroups.v2 import io_stat_totals

PIDS_LIMIT = rq.PIDS_LIMIT
EAGAIN_TEXT = "Resource temporarily unavailable"


def pids(adapter: Adapter, env: Env) -> list[Record]:
    """pids.max 32, 64 forks: a fork fails with EAGAIN and the cgroup never holds more than 32 tasks."""
    setup = (
        f"pids.max {PIDS_LIMIT}; a subshell forks 64 `sleep 5` in the background, then 1.5 s idle"
    )
    job = Job("pids", shell("(for i in $(seq 64); do sleep 5 & done); sleep 1.5"),
              rq.pids(PIDS_LIMIT), columns=("pids_current",), effective_files=("pids.max",))  # fmt: skip
    done = one(adapter, env, job)
    counts = [x for x in done.series["pids_current"] if x is not None]
    peak = max(counts) if counts else None
    refused = EAGAIN_TEXT in done.stderr
    verdict, reason = v.pids_verdict(peak, PIDS_LIMIT, refused, slack=2)
    return [record("pids", adapter, done, verdict=verdict, reason=reason, requested=float(PIDS_LIMIT),
                   measured=None if peak is None else float(peak), unit="tasks", tolerance_pct=0.0,
                   details={"fork_refused_eagain": refused}, setup=setup)]  # fmt: skip


def _io(adapter: Adapter, env: Env, direction: str) -> Record:
    test = f"io.{direction}"
    duration = env.durations.io_s
    setup = f"blkio throttle {direction} 10 MiB/s on a loop device; fio direct {direction} 64 KiB psync for {duration:g} s; first 1 s excluded"  # fmt: skip
    reason = adapter.not_applicable("blkio") or (env.io_reason if env.io_device is None else "")
    if reason or env.io_device is None:
        return not_applicable(test, adapter.name, reason, setup)

    rdev = os.stat(env.io_device).st_rdev
    rw = "read" if direction == "read" else "write"
    column = "io_read_bytes" if direction == "read" else "io_write_bytes"
    job = Job(f"io{direction}",
              shell(f"fio --name={rw} --filename={IO_DEVICE} --direct=1 --rw={rw} --bs=64k --ioengine=psync "
                    f"--runtime={duration:g} --time_based --output-format=terse --terse-version=3"),
              rq.io_throttle(direction, os.major(rdev), os.minor(rdev)),
              block_device=env.io_device, columns=(column,),
              effective_files=(f"blkio.throttle.{direction}_bps_device", "io.max"))  # fmt: skip
    device = f"{os.major(rdev)}:{os.minor(rdev)}"
    done = run_jobs(adapter, [(job, env.instance(job.name))], extra=lambda m: device_io(m, device))[
        0
    ]
    rate = v.steady_rate(
        done.series["t_s"], [x or 0 for x in done.series[column]], 0.5 * rq.MIB, 1.0
    )
    if rate is None:
        return record(test, adapter, done, verdict=FAIL, unit="MiB/s", tolerance_pct=10.0, requested=10.0,
                      reason=f"no IO was seen in the cgroup (fio exit {done.exit_code}: {done.stderr.strip()[-200:]})",
                      setup=setup)  # fmt: skip
    verdict, why = v.tolerance_verdict(f"{direction} rate", rate[0] / rq.MIB, 10.0, 10.0, "MiB/s")
    return record(test, adapter, done, verdict=verdict, reason=why, requested=10.0, measured=rate[0] / rq.MIB,
                  unit="MiB/s", tolerance_pct=10.0, details={"window_s": [rate[1], rate[2]]}, setup=setup)  # fmt: skip


def device_io(manager: CgroupManager, device: str) -> dict[str, int]:
    """io_read_bytes and io_write_bytes of one device ("MAJ:MIN") in a cgroup.

    The cgroup's own totals count every device: on current kernels a loop device
    charges the IO it does on its backing file's disk to the cgroup that issued
    it, so the throttled loop device's bytes would count twice. A VM's cgroup
    keeps its totals ({}): its throttle is on the host disk under the guest's
    raw disk, not on device, and QEMU does IO on that disk only.
    """
    if isinstance(manager, VmCgroup):
        return {}
    paths = manager.paths()
    if "blkio" in paths:
        text = read_optional(paths["blkio"], "blkio.throttle.io_service_bytes")
        if text is None:
            return {}
        read, write = read_write_totals(text, device)
        return {"io_read_bytes": read, "io_write_bytes": write}
    if set(paths) == {""}:
        text = read_optional(paths[""], "io.stat")
        if text is None:
            return {}
        totals = io_stat_totals(text, device)
        return {"io_read_bytes": totals["rbytes"], "io_write_bytes": totals["wbytes"]}
    return {}


def io_throttle(adapter: Adapter, env: Env) -> list[Record]:
    """10 MiB/s read and write throttles on a loop device, direct IO: rate within 10 %."""
    return [_io(adapter, env, "read"), _io(adapter, env, "write")]


def monitoring_cpu(adapter: Adapter, env: Env) -> list[Record]:
    """A CPU burn whose CPU time the process's own rusage reports: the cgroup's count within 2 %."""
    duration = env.durations.monitoring_s
    setup = f"busybox time stress-ng --cpu 1 for {duration:g} s between idle periods; cgroup CPU over the burn vs the burn's rusage (user + sys)"  # fmt: skip
    job = Job("moncpu", shell(f"sleep 0.5; time stress-ng --cpu 1 -t {duration:g}s; sleep 0.5"))
    done = one(adapter, env, job)
    known = _rusage_s(done.stderr)
    window = v.active_window(done.series["t_s"], done.series["cpu_ns"], 0.1e9)
    if known is None or window is None:
        return [record("monitoring.cpu", adapter, done, verdict=FAIL, unit="CPU s", tolerance_pct=2.0,
                       reason=f"no burn seen (time output: {done.stderr.strip()[-200:]!r})", setup=setup)]  # fmt: skip
    cpu = done.series["cpu_ns"]
    used = (cpu[-1] - cpu[window[0]]) / 1e9
    verdict, reason = v.tolerance_verdict("cgroup CPU", used, known, 2.0, "CPU s")
    return [record("monitoring.cpu", adapter, done, verdict=verdict, reason=reason, requested=known,
                   measured=used, unit="CPU s", tolerance_pct=2.0, setup=setup)]  # fmt: skip


def _rusage_s(stderr: str) -> float | None:
    """user + sys seconds from busybox `time` output ("user\t0m 2.99s")."""
    pattern = r"^(user|sys)\s+(\d+)m\s*([\d.]+)s"
    found = {k: int(m) * 60 + float(sec) for k, m, sec in re.findall(pattern, stderr, re.M)}
    return found["user"] + found["sys"] if {"user", "sys"} <= found.keys() else None


def monitoring_memory(adapter: Adapter, env: Env) -> list[Record]:
    """100 MiB held by a known buffer: the cgroup's memory grows by it within 6 %."""
    from harness.enforcement.suite_cpu_memory import hold

    return [hold(adapter, env, "monitoring.memory", 100, 6.0)]


def freeze_kill(adapter: Adapter, env: Env) -> list[Record]:
    """Freeze a CPU hog for 1 s (no CPU used, resumes after thaw), then kill it (gone within 2 s)."""
    setup = "stress-ng --cpu 1; after 1.5 s frozen for 1 s by the platform's pause, thawed 1 s, then killed by the platform's kill"  # fmt: skip
    marks: dict[str, float] = {}

    def during(handle: Launched, sampler: Sampler) -> None:
        time.sleep(1.5)
        handle.freeze()
        marks["frozen_at"], marks["cpu_frozen"] = sampler.now_s(), _cpu_ns(handle)
        time.sleep(1.0)
        marks["thaw_at"], marks["cpu_thaw"] = sampler.now_s(), _cpu_ns(handle)
        handle.thaw()
        time.sleep(1.0)
        marks["cpu_after"], marks["kill_at"] = _cpu_ns(handle), sampler.now_s()
        start = time.monotonic()
        handle.kill()
        while handle.running() and time.monotonic() - start < 10:
            time.sleep(0.005)
        marks["kill_s"] = time.monotonic() - start

    job = Job("freeze", ("stress-ng", "--cpu", "1", "-t", "30s"), timeout_s=60)
    done = run_jobs(adapter, [(job, env.instance("freeze"))], during=during)[0]
    frozen_s = marks["thaw_at"] - marks["frozen_at"]
    verdict, reason = v.frozen_verdict(marks["cpu_thaw"] - marks["cpu_frozen"], frozen_s, 0.01)
    resumed = (marks["cpu_after"] - marks["cpu_thaw"]) / 1e9
    # Resumed: clearly running again (a busy host may leave the hog well under a whole CPU).
    if resumed < 0.1:
        verdict, reason = FAIL, f"{reason}; after thaw it used only {resumed:.2f} CPU s in 1 s"
    else:
        reason = f"{reason}; {resumed:.2f} CPU s in the 1 s after thaw"
    freeze = record("freeze", adapter, done, verdict=verdict, reason=reason, requested=0.0,
                    measured=(marks["cpu_thaw"] - marks["cpu_frozen"]) / 1e6 / frozen_s, unit="CPU ms/s frozen",
                    tolerance_pct=None, details={**marks, "bound": "<= 10 CPU ms per s (1 % of a CPU)"}, setup=setup)  # fmt: skip
    gone = marks["kill_s"] <= 2.0 and done.exit_code in (137, 128 + 9)
    kill = record("kill", adapter, done, verdict=PASS if gone else FAIL, requested=2.0, measured=marks["kill_s"],
                  reason=f"every task gone {marks['kill_s']:.3f} s after the kill (bound 2 s); exit status {done.exit_code}",
                  unit="s", tolerance_pct=None, setup=setup)  # fmt: skip
    return [freeze, kill]


def _cpu_ns(handle: Launched) -> float:
    stats = handle.cgroup.stats()
    return float(stats.cpu_usage_total_ns or 0)
