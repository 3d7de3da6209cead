"""The cgroup libvirt made for a guest, read from the host as the enforcement sampler reads any cgroup.

libvirt's QEMU driver (embedded too) puts each domain into
`/machine/qemu-embed-...<name>.libvirt-qemu` on cgroup v1: memory, blkio and
freezer at that level; cpu and cpuset one level down, in `emulator` (QEMU's own
threads) and `vcpuN` (one per vCPU thread, where `<cputune>` writes the quota
and `<vcpupin>` the cpuset). It makes no cpuacct group here (cpu and cpuacct
are separate mounts), so the CPU time is the vCPU threads' own
(/proc/<qemu>/task/<tid>/schedstat, in ns): exactly the threads the quota
bounds; QEMU's emulator threads are outside that count and outside the quota.

Memory is counted from the moment the job starts: the cgroup holds QEMU plus the
booted guest, and what the job adds on top is what a test compares with its
request (`baseline_bytes`). When the guest dies (QEMU OOM-killed), libvirt
removes the cgroup at once; the last readings are kept, with the OOM kill the
host kernel logged for that QEMU pid, so the final sample still says what happened.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from harness.errors import EnvironmentError_, StateError
from harness.runtime.cgroups.base import CgroupStats
from harness.runtime.cgroups.v1 import BlkioGroup, CpuGroup, MemoryGroup, hierarchies
from harness.runtime.spec import Resources

CGROUP_ROOT = Path("/sys/fs/cgroup")
OWNED = "libvirt owns this cgroup: limits go through the domain's tunables"


def qemu_pid(domain_name: str, proc: Path = Path("/proc")) -> int:
    """The QEMU process of a libvirt domain (libvirt passes `-name guest=<name>,...`)."""
    marker = f"guest={domain_name},".encode()
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if b"qemu-system" in argv[0] and any(a.startswith(marker) for a in argv):
                return int(entry.name)
    raise EnvironmentError_(f"no QEMU process of domain {domain_name} under {proc}")


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """Controller -> path from /proc/<pid>/cgroup (v1 lines; the v2 "0::" line is skipped)."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(","):
            if name:
                found[name] = path
    return found


def oom_kills_logged(kmsg_lines: list[str], pid: int) -> int:
    """How many kernel log lines report an OOM kill of pid."""
    pattern = re.compile(
        rf"Killed process {pid} \("
    )  # one per kill (the oom-kill: line repeats it)
    return sum(1 for line in kmsg_lines if pattern.search(line))


class KernelLog:
    """The kernel log from now on (/dev/kmsg, non-blocking): what the OOM killer says."""

    def __init__(self) -> None:
        self._fd: int | None = None
        with contextlib.suppress(OSError):
            self._fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
            os.lseek(self._fd, 0, os.SEEK_END)

    def read_new(self) -> list[str]:
        """Every record logged since the last call (or since construction)."""
        lines: list[str] = []
        while self._fd is not None:
            try:
                lines.append(os.read(self._fd, 8192).decode(errors="replace"))
            except BlockingIOError:
                break
            except OSError as exc:  # EPIPE: records were overwritten; keep reading
                if exc.errno != 32:
                    break
        return lines

    def close(self) -> None:
        """Release /dev/kmsg."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class VmCgroup:
    """A CgroupManager-like view of one domain's cgroups (read-only: libvirt writes them)."""

    version = 1

    def __init__(self, pid: int, vcpus: int, root: Path = CGROUP_ROOT) -> None:
        with open(f"/proc/{pid}/cgroup") as f:
            where = parse_proc_cgroup(f.read())
        with open("/proc/self/mountinfo") as f:
            mounts = hierarchies(root, f.read())
        if "memory" not in where or "cpu" not in where or "memory" not in mounts:
            raise EnvironmentError_(
                f"QEMU {pid}: not in cgroup v1 memory and cpu hierarchies (/proc/{pid}/cgroup); "
                "the vm enforcement adapter reads libvirt's v1 layout"
            )
        scope = where["memory"]
        self.pid = pid
        self.path = scope
        # cpu/cpuset: QEMU's main thread sits in <scope>/emulator; the vCPUs in <scope>/vcpuN.
        cpu_scope = os.path.dirname(where["cpu"]) if where["cpu"].endswith("/emulator") else where["cpu"]  # fmt: skip
        self._vcpu_dirs = [
            os.path.join(mounts["cpu"], cpu_scope.lstrip("/"), f"vcpu{i}") for i in range(vcpus)
        ]
        self._dirs: dict[str, str] = {c: os.path.join(mounts[c], scope.lstrip("/")) for c in ("memory", "blkio", "freezer") if c in mounts}  # fmt: skip
        self._dirs["cpu"] = self._vcpu_dirs[0]
        if "cpuset" in mounts:
            self._dirs["cpuset"] = os.path.join(mounts["cpuset"], cpu_scope.lstrip("/"), "vcpu0")
        self._thread_ns: dict[int, int] = {}
        self.baseline_bytes = 0
        self._last: CgroupStats | None = None
        self._final: CgroupStats | None = None

    def start_job(self) -> None:
        """Memory counts from here (QEMU and the booted guest are the baseline); peak reset."""
        memory = self._dirs["memory"]
        with (
            contextlib.suppress(OSError),
            open(os.path.join(memory, "memory.max_usage_in_bytes"), "w") as f,
        ):
            f.write("0")
        with open(os.path.join(memory, "memory.usage_in_bytes")) as f:
            self.baseline_bytes = int(f.read())

    def end(self, oom_kills: int) -> None:
        """The guest is gone: keep the last readings, with the OOM kills the kernel logged."""
        last = self._last or CgroupStats()
        self._final = CgroupStats(**{**last.__dict__, "memory_oom_kill": oom_kills})

    def paths(self) -> dict[str, str]:
        """The directories the sampler reads (none once the guest is gone)."""
        return {} if self._final is not None else dict(self._dirs)

    def vcpu_ns(self) -> int:
        """CPU time of the vCPU threads so far (a thread that ended keeps its last count)."""
        for directory in self._vcpu_dirs:
            with contextlib.suppress(OSError, ValueError):
                with open(os.path.join(directory, "tasks")) as f:
                    tids = [int(t) for t in f.read().split()]
                for tid in tids:
                    with open(f"/proc/{self.pid}/task/{tid}/schedstat") as f:
                        self._thread_ns[tid] = int(f.read().split()[0])
        return sum(self._thread_ns.values())

    def stats(self) -> CgroupStats:
        """vCPU CPU time and throttling, memory above the baseline, blkio bytes."""
        if self._final is not None:
            return self._final
        out: dict[str, int] = {}
        MemoryGroup().stat(self._dirs["memory"], out)
        if "blkio" in self._dirs:
            BlkioGroup().stat(self._dirs["blkio"], out)
        for directory in self._vcpu_dirs:
            part: dict[str, int] = {}
            CpuGroup().stat(directory, part)
            for key, value in part.items():
                out[key] = out.get(key, 0) + value
        if "memory_current_bytes" not in out:
            raise StateError(f"the cgroup of QEMU {self.pid} is gone")
        for key in ("memory_current_bytes", "memory_peak_bytes"):
            if key in out:
                out[key] = max(0, out[key] - self.baseline_bytes)
        out["cpu_usage_total_ns"] = self.vcpu_ns()
        self._last = CgroupStats(**out)
        return self._last

    def exists(self) -> bool:
        """True while libvirt's memory cgroup of the domain exists."""
        return self._final is None and os.path.isdir(self._dirs["memory"])

    def pids(self) -> list[int]:
        """QEMU, the domain's only process."""
        return [self.pid] if self.exists() else []

    def create(self) -> None:
        """Not ours to make."""
        raise StateError(OWNED)

    def apply(self, pid: int) -> None:
        """Not ours to join."""
        raise StateError(OWNED)

    def set(self, resources: Resources) -> None:
        """Not ours to write."""
        raise StateError(OWNED)

    def freeze(self) -> None:
        """The adapter pauses the domain instead (virDomainSuspend)."""
        raise StateError(OWNED)

    def thaw(self) -> None:
        """The adapter resumes the domain instead."""
        raise StateError(OWNED)

    def kill_all(self, signum: int) -> None:
        """The adapter destroys the domain instead."""
        raise StateError(OWNED)

    def destroy(self) -> None:
        """libvirt removes the cgroup when the domain ends."""
