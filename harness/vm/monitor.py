"""libvirt's own view of a guest during a workload: getAllDomainStats sampled in a thread.

What a sample keeps (MEASUREMENT.md's confounders, kept small): the guest's CPU
time, vCPU time, wait and steal (where the driver reports them), QEMU's resident
memory, and the scratch disk's bytes and requests. `summary()` turns the samples
into a few numbers over the workload: deltas of the counters, peak RSS.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

from harness.errors import EnvironmentError_

INTERVAL_S = 0.5
# Counters whose change over the workload is recorded (libvirt's stat names).
COUNTERS = ("cpu.time", "cpu.user", "cpu.system", "block.0.rd.bytes", "block.0.wr.bytes",
            "block.0.rd.reqs", "block.0.wr.reqs")  # fmt: skip
VCPU_COUNTERS = ("time", "wait", "delay")  # per vCPU; "delay" is time runnable but not running

Stats = Callable[[], dict[str, Any]]  # one domain's stats record (libvirt's flat dict)


def domain_stats(conn: Any, domain: Any) -> dict[str, Any]:
    """One getAllDomainStats record for domain (empty when the domain is gone)."""
    try:
        records = conn.domainListGetStats([domain], 0, 0)
    except Exception as exc:  # libvirtError: the domain ended under us
        raise EnvironmentError_(f"libvirt stats of {domain.name()}: {exc}") from exc
    return dict(records[0][1]) if records else {}


class StatsSampler:
    """Samples one domain's stats every INTERVAL_S while a workload runs (a daemon thread)."""

    def __init__(self, stats: Stats, interval_s: float = INTERVAL_S) -> None:
        self._stats = stats
        self._interval_s = interval_s
        self._samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StatsSampler:
        self._take()
        self._thread = threading.Thread(target=self._loop, name="vm-stats", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._take()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._take()

    def _take(self) -> None:
        # A guest gone mid-workload: the run itself reports that.
        with contextlib.suppress(EnvironmentError_):
            self._samples.append(self._stats())

    @property
    def samples(self) -> list[dict[str, Any]]:
        """Every record taken, first (before the workload) to last (after it)."""
        return list(self._samples)

    def summary(self) -> dict[str, float]:
        """Counter deltas first to last (ns -> s for times), peak RSS, the number of samples."""
        return summarise(self._samples)


def summarise(samples: list[dict[str, Any]]) -> dict[str, float]:
    """The resources of one workload from its stats records (see StatsSampler.summary)."""
    if not samples:
        return {}
    first, last = samples[0], samples[-1]
    out: dict[str, float] = {"vm_stats_samples": float(len(samples))}
    for name in COUNTERS:
        if name in first and name in last:
            delta = float(last[name]) - float(first[name])
            key = "vm_" + name.replace(".", "_")
            if name.startswith("cpu."):  # nanoseconds
                out[key + "_s"] = delta / 1e9
            else:
                out[key] = delta
    vcpus = int(last.get("vcpu.current", 0))
    for field in VCPU_COUNTERS:
        keys = [f"vcpu.{i}.{field}" for i in range(vcpus)]
        if keys and all(k in first and k in last for k in keys):
            total_ns = sum(float(last[k]) - float(first[k]) for k in keys)
            out[f"vm_vcpu_{field}_s"] = total_ns / 1e9
    rss = [float(s["balloon.rss"]) for s in samples if "balloon.rss" in s]
    if rss:
        out["vm_rss_peak_kib"] = max(rss)
    return out
