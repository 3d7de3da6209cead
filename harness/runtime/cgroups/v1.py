"""cgroup v1 driver (hybrid hosts too): one directory per controller hierarchy, like runc's fs/.

The hierarchies come from mountinfo: every `cgroup` mount under the root whose
super options name a controller we drive. cpu and cpuacct may be separate mounts
or co-mounted ("cpu,cpuacct"); named hierarchies such as name=systemd and the
hybrid cgroup2 mount at root/unified are not ours. The file helpers at the top are
shared with the v2 driver.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path

from harness.errors import EnvironmentError_, OSFailure
from harness.runtime.cgroups.base import CgroupStats
from harness.runtime.cgroups.conversions import pids_max
from harness.runtime.cgroups.fs import (  # noqa: F401 - re-exported for v2 and the tests
    ADD_PID_DELAY_S,
    ADD_PID_RETRIES,
    FREEZE_TIMEOUT_S,
    KILL_TIMEOUT_S,
    POLL_S,
    RMDIR_DELAY_S,
    RMDIR_RETRIES,
    MountEntry,
    _unescape,
    _write,
    add_pid,
    kill_until_empty,
    parse_keyed,
    parse_mountinfo,
    read_file,
    read_int,
    read_optional,
    read_pids,
    remove_empty_parents,
    rmdir,
    signal_pids,
    write_file,
    write_lines,
)
from harness.runtime.spec import Resources

# v1 reports "no limit" as PAGE_COUNTER_MAX pages (0x7ffffffffffff000 with 4 KiB pages);
# anything this large is that, and the stats say -1 like OCI does.
V1_UNLIMITED_MIN = 1 << 62


def hierarchies(root: Path, mountinfo: str) -> dict[str, str]:
    """Controller (or "name=X" for a named hierarchy) -> mountpoint of each v1 hierarchy under root.

    Named hierarchies (name=systemd) have no controller, but the container
    joins them too, as runc does: otherwise its view of that hierarchy (through
    the cgroup namespace or a bind mount) would be the host's root.
    """
    prefix = str(root).rstrip("/") + "/"
    found: dict[str, str] = {}
    for mount in parse_mountinfo(mountinfo):
        if mount.fstype != "cgroup" or not mount.mountpoint.startswith(prefix):
            continue
        for option in mount.super_options:
            known = option in CONTROLLER_NAMES or option.startswith("name=")
            if known and option not in found:
                found[option] = mount.mountpoint
    return found


# ---------------------------------------------------------------- controllers


class Subsystem:
    """One controller: what it writes for linux.resources and what it reads back."""

    name = ""

    def requested(self, resources: Resources) -> bool:
        """Whether the spec asks for anything this controller enforces."""
        return False

    def set(self, directory: str, resources: Resources) -> None:
        """Write the controller's part of linux.resources."""

    def stat(self, directory: str, out: dict[str, int]) -> None:
        """Add this controller's counters to out (CgroupStats field names)."""


class CpusetGroup(Subsystem):
    """cpuset.cpus / cpuset.mems (copying them into new levels is done by Manager.create)."""

    name = "cpuset"

    def requested(self, resources: Resources) -> bool:
        cpu = resources.cpu
        return cpu is not None and (cpu.cpus is not None or cpu.mems is not None)

    def set(self, directory: str, resources: Resources) -> None:
        if resources.cpu is None:
            return
        if resources.cpu.cpus is not None:
            write_file(directory, "cpuset.cpus", resources.cpu.cpus)
        if resources.cpu.mems is not None:
            write_file(directory, "cpuset.mems", resources.cpu.mems)


class DevicesGroup(Subsystem):
    """devices.allow / devices.deny: deny everything, then the spec's rules in order."""

    name = "devices"

    def requested(self, resources: Resources) -> bool:
        return bool(resources.devices)

    def set(self, directory: str, resources: Resources) -> None:
        # Fine at creation; on a live update the container briefly loses its devices
        # (runc avoids that with a rule emulator, which we do not need yet).
        if not resources.devices:
            return
        write_file(directory, "devices.deny", "a")
        for rule in resources.devices:
            major = "*" if rule.major is None else str(rule.major)
            minor = "*" if rule.minor is None else str(rule.minor)
            name = "devices.allow" if rule.allow else "devices.deny"
            write_file(directory, name, f"{rule.type} {major}:{minor} {rule.access}")


class MemoryGroup(Subsystem):
    """memory.limit_in_bytes, memsw, soft limit, swappiness, oom_control."""

    name = "memory"

    def requested(self, resources: Resources) -> bool:
        return resources.memory is not None

    def set(self, directory: str, resources: Resources) -> None:
        memory = resources.memory
        if memory is None:
            return
        limit, swap = memory.limit, memory.swap
        has_memsw = os.path.exists(os.path.join(directory, "memory.memsw.limit_in_bytes"))
        if swap is None and limit == -1 and has_memsw:
            swap = -1  # runc: an unlimited memory limit lifts the swap limit too
        if swap is not None and not has_memsw:
            # -1 (no swap limit) is what the host does anyway. swap == limit (no swap) is
            # let through too, although without accounting the kernel cannot enforce it.
            if swap not in (-1, limit):
                raise EnvironmentError_(
                    "linux.resources.memory.swap needs swap accounting, which is not enabled "
                    "on this host (memory.memsw.limit_in_bytes missing; boot with swapaccount=1)"
                )
            swap = None
        if limit is not None and swap is not None:
            # The kernel keeps memsw >= limit after every write: raise swap first when
            # growing, lower the limit first when shrinking (runc setMemoryAndSwap).
            current = read_int(directory, "memory.limit_in_bytes")
            if swap == -1 or (current is not None and current < swap):
                write_file(directory, "memory.memsw.limit_in_bytes", str(swap))
                write_file(directory, "memory.limit_in_bytes", str(limit))
            else:
                write_file(directory, "memory.limit_in_bytes", str(limit))
                write_file(directory, "memory.memsw.limit_in_bytes", str(swap))
        elif limit is not None:
            write_file(directory, "memory.limit_in_bytes", str(limit))
        elif swap is not None:
            write_file(directory, "memory.memsw.limit_in_bytes", str(swap))
        if memory.reservation is not None:
            write_file(directory, "memory.soft_limit_in_bytes", str(memory.reservation))
        if memory.swappiness is not None:
            write_file(directory, "memory.swappiness", str(memory.swappiness))
        if memory.disable_oom_killer:
            write_file(directory, "memory.oom_control", "1")

    def stat(self, directory: str, out: dict[str, int]) -> None:
        for field, name in (
            ("memory_current_bytes", "memory.usage_in_bytes"),
            ("memory_peak_bytes", "memory.max_usage_in_bytes"),
            ("memory_limit_bytes", "memory.limit_in_bytes"),
            ("memory_oom_events", "memory.failcnt"),
        ):
            value = read_int(directory, name)
            if value is not None:
                out[field] = -1 if value >= V1_UNLIMITED_MIN else value
        oom = parse_keyed(read_optional(directory, "memory.oom_control"))
        if "oom_kill" in oom:  # kernel >= 4.13
            out["memory_oom_kill"] = oom["oom_kill"]


class CpuGroup(Subsystem):
    """cpu.shares, cpu.cfs_period_us, cpu.cfs_quota_us, cpu.idle."""

    name = "cpu"

    def requested(self, resources: Resources) -> bool:
        cpu = resources.cpu
        return cpu is not None and any(
            v is not None for v in (cpu.shares, cpu.quota, cpu.period, cpu.idle)
        )

    def set(self, directory: str, resources: Resources) -> None:
        cpu = resources.cpu
        if cpu is None:
            return
        if cpu.shares:  # 0 = unset, as in runc
            write_file(directory, "cpu.shares", str(cpu.shares))
        period_pending = False
        if cpu.period is not None:
            try:
                write_file(directory, "cpu.cfs_period_us", str(cpu.period))
            except OSFailure as e:
                # A shorter period can be refused (EINVAL) while the old quota over the new
                # period exceeds the parent's; runc retries it after writing the quota.
                if e.errno != errno.EINVAL or cpu.quota is None:
                    raise
                period_pending = True
        if cpu.quota is not None:
            write_file(directory, "cpu.cfs_quota_us", str(cpu.quota))
            if period_pending:
                write_file(directory, "cpu.cfs_period_us", str(cpu.period))
        if cpu.idle is not None:
            write_file(directory, "cpu.idle", str(cpu.idle))

    def stat(self, directory: str, out: dict[str, int]) -> None:
        stat = parse_keyed(read_optional(directory, "cpu.stat"))
        for field, key in (
            ("cpu_nr_periods", "nr_periods"),
            ("cpu_nr_throttled", "nr_throttled"),
            ("cpu_throttled_ns", "throttled_time"),
        ):
            if key in stat:
                out[field] = stat[key]


class CpuacctGroup(Subsystem):
    """CPU usage counters only."""

    name = "cpuacct"

    def stat(self, directory: str, out: dict[str, int]) -> None:
        total = read_int(directory, "cpuacct.usage")
        if total is not None:
            out["cpu_usage_total_ns"] = total
        user = read_int(directory, "cpuacct.usage_user")  # ns, kernel >= 4.7
        system = read_int(directory, "cpuacct.usage_sys")
        if user is None or system is None:
            # cpuacct.stat counts USER_HZ ticks: coarser, but on every kernel.
            ticks = parse_keyed(read_optional(directory, "cpuacct.stat"))
            ns_per_tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
            user = ticks["user"] * ns_per_tick if "user" in ticks else None
            system = ticks["system"] * ns_per_tick if "system" in ticks else None
        if user is not None:
            out["cpu_usage_user_ns"] = user
        if system is not None:
            out["cpu_usage_system_ns"] = system


class PidsGroup(Subsystem):
    """pids.max."""

    name = "pids"

    def requested(self, resources: Resources) -> bool:
        return resources.pids is not None

    def set(self, directory: str, resources: Resources) -> None:
        if resources.pids is not None:
            write_file(directory, "pids.max", pids_max(resources.pids.limit))

    def stat(self, directory: str, out: dict[str, int]) -> None:
        for field, name in (("pids_current", "pids.current"), ("pids_limit", "pids.max")):
            value = read_int(directory, name)
            if value is not None:
                out[field] = value


class BlkioGroup(Subsystem):
    """blkio weights (CFQ, else BFQ files) and throttle rules."""

    name = "blkio"

    def requested(self, resources: Resources) -> bool:
        return resources.block_io is not None

    def set(self, directory: str, resources: Resources) -> None:
        blkio = resources.block_io
        if blkio is None:
            return
        if blkio.weight:  # 0 = unset, as in runc
            write_file(directory, _weight_file(directory, "weight"), str(blkio.weight))
        if blkio.leaf_weight:
            name = _weight_file(directory, "leaf_weight")
            write_file(directory, name, str(blkio.leaf_weight))
        weights = [f"{d.major}:{d.minor} {d.weight}" for d in blkio.weight_device if d.weight]
        if weights:
            write_lines(directory, _weight_file(directory, "weight_device"), weights)
        leaves = [
            f"{d.major}:{d.minor} {d.leaf_weight}" for d in blkio.weight_device if d.leaf_weight
        ]
        if leaves:
            write_lines(directory, _weight_file(directory, "leaf_weight_device"), leaves)
        for name, devices in (
            ("read_bps_device", blkio.throttle_read_bps_device),
            ("write_bps_device", blkio.throttle_write_bps_device),
            ("read_iops_device", blkio.throttle_read_iops_device),
            ("write_iops_device", blkio.throttle_write_iops_device),
        ):
            if devices:
                lines = [f"{d.major}:{d.minor} {d.rate}" for d in devices]
                write_lines(directory, "blkio.throttle." + name, lines)

    def stat(self, directory: str, out: dict[str, int]) -> None:
        # The throttle files count every bio on current kernels; the others need CFQ or BFQ.
        for prefix in ("blkio.throttle.", "blkio.", "blkio.bfq."):
            nbytes = read_optional(directory, prefix + "io_service_bytes")
            if nbytes is not None:
                ops = read_optional(directory, prefix + "io_serviced") or ""
                out["io_read_bytes"], out["io_write_bytes"] = read_write_totals(nbytes)
                out["io_read_ops"], out["io_write_ops"] = read_write_totals(ops)
                return


def _weight_file(directory: str, name: str) -> str:
    # blkio.weight* exist with CFQ (gone in 5.0); BFQ has blkio.bfq.weight*.
    for candidate in ("blkio." + name, "blkio.bfq." + name):
        if os.path.exists(os.path.join(directory, candidate)):
            return candidate
    raise EnvironmentError_(
        f"linux.resources.blockIO asks for blkio {name}, but this host's blkio controller "
        "has no CFQ or BFQ weight files (select the bfq I/O scheduler)"
    )


def read_write_totals(text: str, device: str | None = None) -> tuple[int, int]:
    """(read, write) of an io_service_bytes/io_serviced file, over every device or one "MAJ:MIN".

    Lines are "MAJ:MIN Read N", "... Write N", "... Total N" and a final "Total N".
    """
    read = write = 0
    for line in text.splitlines():
        fields = line.split()
        if device is not None and fields and fields[0] != device:
            continue
        if len(fields) == 3 and fields[1] == "Read":
            read += int(fields[2])
        elif len(fields) == 3 and fields[1] == "Write":
            write += int(fields[2])
    return read, write


class FreezerGroup(Subsystem):
    """freezer.state: pause and resume every task."""

    name = "freezer"

    def freeze(self, directory: str) -> None:
        """Write FROZEN until the kernel reports FROZEN (bounded), like runc."""
        deadline = time.monotonic() + FREEZE_TIMEOUT_S
        while True:
            # v1 does not retry tasks it failed to freeze: writing FROZEN again does.
            write_file(directory, "freezer.state", "FROZEN")
            if read_file(directory, "freezer.state").strip() == "FROZEN":
                return
            if time.monotonic() > deadline:
                self.thaw(directory)
                raise OSFailure("freeze", directory, errno.ETIMEDOUT)
            time.sleep(POLL_S)

    def thaw(self, directory: str) -> None:
        """Resume the tasks (the kernel thaws synchronously)."""
        write_file(directory, "freezer.state", "THAWED")


FREEZER = FreezerGroup()  # Manager.freeze/thaw/kill_all use it directly

# The order set() writes in, runc's `subsystems`: cpuset first because nothing can run
# in a v1 cpuset without cpus and mems; devices before anything can use a device.
SUBSYSTEMS: tuple[Subsystem, ...] = (
    CpusetGroup(),
    DevicesGroup(),
    MemoryGroup(),
    CpuGroup(),
    CpuacctGroup(),
    PidsGroup(),
    BlkioGroup(),
    FREEZER,
)
CONTROLLER_NAMES = frozenset(s.name for s in SUBSYSTEMS)


# ---------------------------------------------------------------- the manager


class Manager:
    """A container's cgroup as one directory in each v1 hierarchy."""

    version = 1

    def __init__(self, path: str, mountpoints: dict[str, str]) -> None:
        self.path = path
        self._mountpoints = mountpoints
        self._dirs = {c: os.path.join(mp, path.lstrip("/")) for c, mp in mountpoints.items()}
        # Co-mounted controllers (cpu,cpuacct) share one directory: create/join/remove it once.
        self._unique = list(dict.fromkeys(self._dirs.values()))

    def create(self) -> None:
        """Make the directory in every hierarchy; new cpuset levels inherit cpus/mems."""
        if not self._dirs:
            raise EnvironmentError_("no cgroup v1 controller hierarchy is mounted")
        cpuset = self._dirs.get("cpuset")
        for directory in self._unique:
            if directory == cpuset:
                self._create_cpuset(self._mountpoints["cpuset"])
            else:
                try:
                    os.makedirs(directory, exist_ok=True)
                except OSError as e:
                    raise OSFailure("mkdir", directory, e.errno or errno.EIO) from e

    def _create_cpuset(self, mountpoint: str) -> None:
        parent, cpus, mems = mountpoint, "", ""
        for part in self.path.strip("/").split("/"):
            child = os.path.join(parent, part)
            try:
                os.mkdir(child)
            except FileExistsError:
                parent, cpus, mems = child, "", ""  # already set up by whoever made it
                continue
            except OSError as e:
                raise OSFailure("mkdir", child, e.errno or errno.EIO) from e
            # A new v1 cpuset starts with empty cpus/mems and no task could join it.
            if not cpus:
                cpus = read_file(parent, "cpuset.cpus").strip()
                mems = read_file(parent, "cpuset.mems").strip()
            write_file(child, "cpuset.cpus", cpus)
            write_file(child, "cpuset.mems", mems)
            parent = child

    def apply(self, pid: int) -> None:
        """Move pid (0 = the caller) into the cgroup in every hierarchy."""
        for directory in self._unique:
            add_pid(directory, pid)

    def set(self, resources: Resources) -> None:
        """Write linux.resources, controller by controller in runc's order."""
        for subsystem in SUBSYSTEMS:
            directory = self._dirs.get(subsystem.name)
            if directory is not None:
                subsystem.set(directory, resources)
            elif subsystem.requested(resources):
                raise EnvironmentError_(
                    f"linux.resources asks for the {subsystem.name} cgroup controller, "
                    "which is not mounted on this host"
                )

    def stats(self) -> CgroupStats:
        """Read every available counter; missing files leave their fields None."""
        out: dict[str, int] = {}
        for subsystem in SUBSYSTEMS:
            directory = self._dirs.get(subsystem.name)
            if directory is not None:
                subsystem.stat(directory, out)
        return CgroupStats(**out)

    def freeze(self) -> None:
        """Freeze every task and wait for FROZEN."""
        FREEZER.freeze(self._freezer_dir())

    def thaw(self) -> None:
        """Undo freeze()."""
        FREEZER.thaw(self._freezer_dir())

    def _freezer_dir(self) -> str:
        if "freezer" not in self._dirs:
            raise EnvironmentError_("the freezer cgroup controller is not mounted on this host")
        return self._dirs["freezer"]

    def _procs_dir(self) -> str:
        return self._dirs.get("pids") or self._dirs.get("freezer") or self._unique[0]

    def pids(self) -> list[int]:
        """Every pid in the cgroup."""
        return read_pids(self._procs_dir()) if self._unique else []

    def exists(self) -> bool:
        """True while any of the directories exists."""
        return any(os.path.isdir(d) for d in self._unique)

    def kill_all(self, signum: int) -> None:
        """Signal every process; for SIGKILL, repeat until the cgroup is empty."""
        if not self._unique:
            return
        directory = self._procs_dir()
        if signum != signal.SIGKILL:
            signal_pids(directory, signum)
            return
        if not read_pids(directory):
            return
        if "freezer" in self._dirs:
            # A task frozen by the v1 freezer cannot act on SIGKILL until thawed.
            FREEZER.thaw(self._dirs["freezer"])
        kill_until_empty(directory)

    def destroy(self) -> None:
        """rmdir the container's own directory in every hierarchy (shared parents stay)."""
        for directory in self._unique:
            rmdir(directory)

    def paths(self) -> dict[str, str]:
        """Controller -> directory."""
        return dict(self._dirs)
