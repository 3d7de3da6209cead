"""The CgroupManager protocol, the stats record, and the one factory that knows the drivers.

Like runc's cgroup `Manager` interface with its `fs` (v1) and `fs2` (v2) drivers
and a single `New`: the runtime only ever talks to a CgroupManager, and only
`new_manager` decides which driver a host gets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from harness.errors import OSFailure, UserError
from harness.runtime.spec import Resources

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class CgroupStats:
    """What the harness reads back from a container's cgroup. None = not available here."""

    cpu_usage_user_ns: int | None = None
    cpu_usage_system_ns: int | None = None
    cpu_usage_total_ns: int | None = None
    cpu_nr_periods: int | None = None
    cpu_nr_throttled: int | None = None
    cpu_throttled_ns: int | None = None
    memory_current_bytes: int | None = None
    memory_peak_bytes: int | None = None
    memory_limit_bytes: int | None = None
    memory_oom_events: int | None = None  # times the limit was hit (v1 failcnt-style / v2 oom)
    memory_oom_kill: int | None = None  # processes killed by the OOM killer in this cgroup
    memory_high_events: int | None = None
    pids_current: int | None = None
    pids_limit: int | None = None
    io_read_bytes: int | None = None
    io_write_bytes: int | None = None
    io_read_ops: int | None = None
    io_write_ops: int | None = None


class CgroupManager(Protocol):
    """One container's cgroup, on whichever cgroup version the host runs."""

    version: int  # 1 or 2
    path: str  # the cgroupsPath, absolute within the hierarchy (e.g. "/isobench/run-1/ctr")

    def create(self) -> None:
        """Make the cgroup directories (parents too); cpuset parents get cpus/mems filled."""

    def apply(self, pid: int) -> None:
        """Move pid (0 = the caller) into the cgroup in every hierarchy."""

    def set(self, resources: Resources) -> None:
        """Write linux.resources into the controller files; an unwritable value raises OSFailure."""

    def stats(self) -> CgroupStats:
        """Read usage, throttling, memory, OOM, pids and IO counters."""

    def freeze(self) -> None:
        """Freeze every task in the cgroup and wait until the kernel reports it frozen."""

    def thaw(self) -> None:
        """Undo freeze()."""

    def pids(self) -> list[int]:
        """Every pid in the cgroup (cgroup.procs)."""

    def exists(self) -> bool:
        """True while any of the cgroup's directories exists."""

    def kill_all(self, signum: int) -> None:
        """Signal every process in the cgroup (cgroup.kill for SIGKILL on v2 when available)."""

    def destroy(self) -> None:
        """Remove the cgroup directories (retrying while the kernel still reports busy)."""

    def paths(self) -> dict[str, str]:
        """Controller (or "" on v2) -> absolute directory, for the state file and for cleanup."""


def detect_version(root: Path, mountinfo: str) -> int:
    """2 when root itself is a cgroup2 mount (pure v2); 1 otherwise (v1 or hybrid)."""
    from harness.runtime.cgroups.fs import parse_mountinfo

    fstype = ""
    for mount in parse_mountinfo(mountinfo):
        if mount.mountpoint == str(root):
            fstype = mount.fstype  # the last mount on a path is the one in effect
    return 2 if fstype == "cgroup2" else 1


def new_manager(
    cgroups_path: str, *, root: Path = CGROUP_ROOT, mountinfo: str | None = None
) -> CgroupManager:
    """The driver for this host's cgroup version, managing cgroups_path (nothing is created yet)."""
    # Imported here, not at the top: the drivers import this module.
    from harness.runtime.cgroups import v1, v2

    if not cgroups_path.startswith("/") and cgroups_path.count(":") == 2:
        raise UserError(
            f"linux.cgroupsPath {cgroups_path!r} is runc's systemd form (slice:prefix:name), "
            "which needs a systemd cgroup driver isobench does not have; use an absolute "
            "path such as /isobench/<run-id>/<container>"
        )
    parts = PurePosixPath(cgroups_path).parts
    if not cgroups_path.startswith("/") or len(parts) < 2 or ".." in parts:
        raise UserError(
            f"linux.cgroupsPath {cgroups_path!r} must be an absolute path below the cgroup "
            "root without '..' components, such as /isobench/<run-id>/<container>"
        )
    path = "/" + "/".join(parts[1:])  # normalised: no "//", no "." components
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError as e:
            raise OSFailure("read", "/proc/self/mountinfo", e.errno or 0) from e
    if detect_version(root, mountinfo) == 2:
        return v2.Manager(path, root)
    return v1.Manager(path, v1.hierarchies(root, mountinfo))
