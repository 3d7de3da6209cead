"""Startup under load: many cold starts at once, each timed from its launch to its exit.

A platform launches BURST_SIZE instances of /bin/true as fast as it can (all
launched before any is waited for) and this module times each one's exit. The
exit is seen through a pidfd (readable when the process ends, before it is
reaped), so the order of reaping does not skew the per-launch figures, and the
parent's other children (a runtime helper, a peer server) are never reaped here.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass

from harness.errors import EnvironmentError_

BURST_SIZE = 20
BURST_TIMEOUT_S = 120.0  # a burst of /bin/true that takes this long has hung


@dataclass(frozen=True)
class Burst:
    """One burst: wall time from the first launch to the last exit, and each launch-to-exit."""

    total_s: float
    per_launch_s: tuple[float, ...]

    def metrics(self) -> dict[str, float]:
        """The sample's metrics: the burst's total and the per-launch distribution."""
        per = sorted(self.per_launch_s)
        return {
            "total_s": self.total_s,
            "per_launch_p50_s": statistics.median(per),
            "per_launch_max_s": per[-1],
            "per_launch_mean_s": statistics.fmean(per),
            "launches_per_s": len(per) / self.total_s if self.total_s > 0 else 0.0,
        }


def exit_times(started: dict[int, float], timeout_s: float = BURST_TIMEOUT_S) -> dict[int, float]:
    """perf_counter() at which each pid (a child, launched at started[pid]) exited; not reaped.

    At the timeout every pid still running is SIGKILLed (only these pids, which the
    caller started) and an EnvironmentError_ is raised; the caller still reaps them.
    """
    fds: dict[int, int] = {}
    ended: dict[int, float] = {}
    try:
        for pid in started:
            try:
                fds[os.pidfd_open(pid)] = pid
            except ProcessLookupError:
                ended[pid] = time.perf_counter()  # already gone (and reaped elsewhere)
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        deadline = time.monotonic() + timeout_s
        while len(ended) < len(started):
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                _kill(pid for pid in started if pid not in ended)
                raise EnvironmentError_(
                    f"burst: {len(started) - len(ended)} of {len(started)} launches still "
                    f"running after {timeout_s:.0f} s; killed"
                )
            for fd, _ in poller.poll(left_ms):
                ended[fds[fd]] = time.perf_counter()
                poller.unregister(fd)
    finally:
        for fd in fds:
            os.close(fd)
    return ended


def reap(pids: Iterable[int]) -> dict[int, int]:
    """waitpid each pid (our children); their exit codes (negative: killed by that signal)."""
    return {pid: os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids}


def check_codes(codes: dict[int, int], what: str) -> None:
    """Raise, naming the first failure, unless every launch exited with 0."""
    failed = sorted(code for code in codes.values() if code != 0)
    if failed:
        raise EnvironmentError_(
            f"{what}: {len(failed)} of {len(codes)} burst launches failed (exit {failed[0]})"
        )


def burst_of_children(started: dict[int, float], what: str) -> Burst:
    """Time, reap and check launches that are plain children of this process (spawned at started[pid])."""
    try:
        ended = exit_times(started)
    finally:
        codes = reap(started)
    check_codes(codes, what)
    return summarize(started, ended)


def summarize(started: dict[int, float], ended: dict[int, float]) -> Burst:
    """Total (first launch to last exit) and per-launch durations."""
    per = tuple(ended[pid] - started[pid] for pid in started)
    return Burst(max(ended.values()) - min(started.values()), per)


def _kill(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
