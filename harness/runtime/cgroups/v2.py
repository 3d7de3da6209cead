"""cgroup v2 driver: one directory in the unified hierarchy, like runc's fs2/.

The OCI resources are shaped for v1; conversions.py turns them into v2 values.
Shared file helpers, and the pids and cpuset controllers (whose files are the
same on both versions), come from v1.py.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from harness.errors import EnvironmentError_, OSFailure, UserError
from harness.runtime.cgroups import conversions
from harness.runtime.cgroups.base import CgroupStats
from harness.runtime.cgroups.fs import (
    FREEZE_TIMEOUT_S,
    POLL_S,
    add_pid,
    kill_until_empty,
    parse_keyed,
    read_file,
    read_int,
    read_optional,
    read_pids,
    rmdir,
    signal_pids,
    write_file,
    write_lines,
)
from harness.runtime.cgroups.v1 import CpusetGroup, PidsGroup, Subsystem
from harness.runtime.spec import Resources

# The cpu.shares -> cpu.weight formula. runc >= 1.3.2 (and crun >= 1.23) use the quadratic
# one, which maps the v1 default 1024 to the v2 default 100; older runc used the linear
# one (1024 -> 39). Swap in conversions.shares_to_weight_linear to reproduce those.
SHARES_TO_WEIGHT: Callable[[int], int] = conversions.shares_to_weight

# Enabled in every ancestor's cgroup.subtree_control, when the ancestor has them.
SUBTREE_CONTROLLERS = ("cpu", "cpuset", "memory", "pids", "io")


class CpuController(Subsystem):
    """cpu.weight (from shares), cpu.max, cpu.idle; cpu.stat."""

    name = "cpu"

    def set(self, directory: str, resources: Resources) -> None:
        cpu = resources.cpu
        if cpu is None:
            return
        if cpu.shares:  # 0 = unset
            write_file(directory, "cpu.weight", str(SHARES_TO_WEIGHT(cpu.shares)))
        if cpu.quota is not None or cpu.period is not None:
            write_file(directory, "cpu.max", conversions.cpu_max(cpu.quota, cpu.period))
        if cpu.idle is not None:
            write_file(directory, "cpu.idle", str(cpu.idle))

    def stat(self, directory: str, out: dict[str, int]) -> None:
        # cpu.stat exists even when the cpu controller is not enabled (usage only).
        stat = parse_keyed(read_optional(directory, "cpu.stat"))
        for field, key, scale in (
            ("cpu_usage_total_ns", "usage_usec", 1000),
            ("cpu_usage_user_ns", "user_usec", 1000),
            ("cpu_usage_system_ns", "system_usec", 1000),
            ("cpu_nr_periods", "nr_periods", 1),
            ("cpu_nr_throttled", "nr_throttled", 1),
            ("cpu_throttled_ns", "throttled_usec", 1000),
        ):
            if key in stat:
                out[field] = stat[key] * scale


class MemoryController(Subsystem):
    """memory.max, memory.swap.max (OCI swap is memory+swap), memory.low."""

    name = "memory"

    def set(self, directory: str, resources: Resources) -> None:
        # memory.swappiness and disable_oom_killer have no v2 file; runc's fs2 ignores them
        # too. memory.high has no OCI field: it comes through resources.unified.
        memory = resources.memory
        if memory is None:
            return
        limit, swap = memory.limit, memory.swap
        if swap is None and limit == -1:
            swap = -1  # runc: an unlimited memory limit lifts the swap limit too
        if swap is not None:
            value = conversions.memory_swap_to_v2(swap, limit)
            try:
                write_file(directory, "memory.swap.max", value)
            except OSFailure as e:
                if e.errno != errno.ENOENT:
                    raise
                # No swap accounting: "no limit" and "no swap" (swap == limit) need no file.
                if value not in ("max", "0"):
                    raise EnvironmentError_(
                        "linux.resources.memory.swap needs memory.swap.max, which is missing: "
                        "the memory controller is not enabled or swap accounting is off"
                    ) from e
        if limit is not None:
            write_file(directory, "memory.max", "max" if limit == -1 else str(limit))
        if memory.reservation is not None:
            low = "max" if memory.reservation == -1 else str(memory.reservation)
            write_file(directory, "memory.low", low)

    def stat(self, directory: str, out: dict[str, int]) -> None:
        for field, name in (
            ("memory_current_bytes", "memory.current"),
            ("memory_peak_bytes", "memory.peak"),  # kernel >= 5.19
            ("memory_limit_bytes", "memory.max"),
        ):
            value = read_int(directory, name)
            if value is not None:
                out[field] = value
        events = parse_keyed(read_optional(directory, "memory.events"))
        for field, key in (
            ("memory_oom_events", "oom"),
            ("memory_oom_kill", "oom_kill"),
            ("memory_high_events", "high"),
        ):
            if key in events:
                out[field] = events[key]


class IoController(Subsystem):
    """io.weight (from blkio weights) and io.max (the four throttle lists merged per device)."""

    name = "io"

    def set(self, directory: str, resources: Resources) -> None:
        # leaf_weight has no v2 counterpart (it was CFQ-only); runc's fs2 ignores it too.
        blkio = resources.block_io
        if blkio is None:
            return
        to_io = conversions.blkio_weight_to_io_weight
        weights = [f"default {to_io(blkio.weight)}"] if blkio.weight else []
        weights += [
            f"{d.major}:{d.minor} {to_io(d.weight)}" for d in blkio.weight_device if d.weight
        ]
        if weights:
            write_lines(directory, "io.weight", weights)
        limits: dict[str, list[str]] = {}
        for key, devices in (
            ("rbps", blkio.throttle_read_bps_device),
            ("wbps", blkio.throttle_write_bps_device),
            ("riops", blkio.throttle_read_iops_device),
            ("wiops", blkio.throttle_write_iops_device),
        ):
            for d in devices:
                # Rate 0 removes a v1 throttle rule; v2 says that with "max".
                limits.setdefault(f"{d.major}:{d.minor}", []).append(f"{key}={d.rate or 'max'}")
        if limits:
            write_lines(
                directory, "io.max", [f"{dev} {' '.join(kv)}" for dev, kv in limits.items()]
            )

    def stat(self, directory: str, out: dict[str, int]) -> None:
        text = read_optional(directory, "io.stat")
        if text is None:
            return
        totals = io_stat_totals(text)
        out["io_read_bytes"], out["io_write_bytes"] = totals["rbytes"], totals["wbytes"]
        out["io_read_ops"], out["io_write_ops"] = totals["rios"], totals["wios"]


# set() order, runc fs2's. Devices are missing on purpose: v2 enforces them only through
# an eBPF program, which we do not load. The runtime creates only the standard device
# nodes in /dev, so device rules in a spec are accepted and nothing is recorded for them.
CONTROLLERS: tuple[Subsystem, ...] = (
    PidsGroup(),
    MemoryController(),
    IoController(),
    CpuController(),
    CpusetGroup(),
)


def io_stat_totals(text: str, device: str | None = None) -> dict[str, int]:
    """rbytes, wbytes, rios, wios of io.stat, over every device or one "MAJ:MIN"."""
    totals = {"rbytes": 0, "wbytes": 0, "rios": 0, "wios": 0}
    for line in text.splitlines():  # "MAJ:MIN rbytes=N wbytes=N rios=N wios=N dbytes=N ..."
        fields = line.split()
        if not fields or (device is not None and fields[0] != device):
            continue
        for pair in fields[1:]:
            key, _, value = pair.partition("=")
            if key in totals:
                totals[key] += int(value)
    return totals


def _check_unified(unified: tuple[tuple[str, str], ...]) -> None:
    for key, _ in unified:
        if not key or "/" in key or ".." in key:
            raise UserError(
                f"linux.resources.unified key {key!r} must be a file name in the cgroup "
                "directory, such as memory.high (no '/' or '..')"
            )


class Manager:
    """A container's cgroup as one directory in the unified hierarchy."""

    version = 2

    def __init__(self, path: str, root: Path) -> None:
        self.path = path
        self._root = str(root)
        self._dir = os.path.join(self._root, path.lstrip("/"))

    def create(self) -> None:
        """Make the directory and its parents, enabling our controllers in every ancestor."""
        # A child's cgroup.controllers is its parent's subtree_control, so only the root's
        # needs reading: what we enable at one level is available at the next.
        available = read_file(self._root, "cgroup.controllers").split()
        enable = " ".join("+" + c for c in SUBTREE_CONTROLLERS if c in available)
        parent = self._root
        for part in self.path.strip("/").split("/"):
            if enable:
                write_file(parent, "cgroup.subtree_control", enable)
            child = os.path.join(parent, part)
            try:
                os.mkdir(child)
            except FileExistsError:
                pass
            except OSError as e:
                raise OSFailure("mkdir", child, e.errno or errno.EIO) from e
            parent = child

    def apply(self, pid: int) -> None:
        """Move pid (0 = the caller) into the cgroup."""
        add_pid(self._dir, pid)

    def set(self, resources: Resources) -> None:
        """Write linux.resources (converted), then resources.unified as given, last."""
        _check_unified(resources.unified)  # before writing anything
        for controller in CONTROLLERS:
            try:
                controller.set(self._dir, resources)
            except OSFailure as e:
                self._explain(e, controller.name)
                raise
        for key, value in resources.unified:
            try:
                write_file(self._dir, key, value)
            except OSFailure as e:
                self._explain(e, key.partition(".")[0])
                raise

    def _explain(self, failure: OSFailure, controller: str) -> None:
        # A missing file usually means the controller is not enabled here; say so.
        if failure.errno != errno.ENOENT or controller == "cgroup":
            return
        enabled = (read_optional(self._dir, "cgroup.controllers") or "").split()
        if controller not in enabled:
            raise EnvironmentError_(
                f"linux.resources asks for the {controller} cgroup controller, which is not "
                f"available in {self._dir} (available: {' '.join(enabled) or 'none'})"
            ) from failure

    def stats(self) -> CgroupStats:
        """Read every available counter; missing files leave their fields None."""
        out: dict[str, int] = {}
        for controller in CONTROLLERS:
            controller.stat(self._dir, out)
        return CgroupStats(**out)

    def freeze(self) -> None:
        """Write cgroup.freeze 1 and wait for "frozen 1" in cgroup.events (bounded)."""
        try:
            write_file(self._dir, "cgroup.freeze", "1")
        except OSFailure as e:
            if e.errno == errno.ENOENT and os.path.isdir(self._dir):
                raise EnvironmentError_("freezing a cgroup v2 needs Linux >= 5.2") from e
            raise
        deadline = time.monotonic() + FREEZE_TIMEOUT_S
        while parse_keyed(read_file(self._dir, "cgroup.events")).get("frozen") != 1:
            if time.monotonic() > deadline:
                self.thaw()
                raise OSFailure("freeze", self._dir, errno.ETIMEDOUT)
            time.sleep(POLL_S)

    def thaw(self) -> None:
        """Undo freeze()."""
        write_file(self._dir, "cgroup.freeze", "0")

    def pids(self) -> list[int]:
        """Every pid in the cgroup."""
        return read_pids(self._dir)

    def exists(self) -> bool:
        """True while the directory exists."""
        return os.path.isdir(self._dir)

    def kill_all(self, signum: int) -> None:
        """Signal every process; SIGKILL uses cgroup.kill (Linux >= 5.14) and waits until empty."""
        if signum != signal.SIGKILL:
            signal_pids(self._dir, signum)
            return
        # cgroup.kill also reaches frozen tasks and tasks forked during the kill.
        if os.path.exists(os.path.join(self._dir, "cgroup.kill")):
            write_file(self._dir, "cgroup.kill", "1")
        kill_until_empty(self._dir)

    def destroy(self) -> None:
        """rmdir the container's own directory (shared parents stay)."""
        rmdir(self._dir)

    def paths(self) -> dict[str, str]:
        """{"": directory}, as runc reports the unified hierarchy."""
        return {"": self._dir}
