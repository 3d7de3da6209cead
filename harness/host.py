"""Facts about this machine, recorded with every result and shown by `isobench doctor`.

Every probe reports instead of raising (pyperf's `system show`): a file that
is missing or unreadable gives "unknown", a missing tool gives None. The
paths are module constants so tests point them at a fake tree.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

from harness.runtime.cgroups.base import detect_version
from harness.runtime.cgroups.fs import parse_mountinfo

PROC = Path("/proc")
SYS = Path("/sys")
MACHINE_ID = Path("/etc/machine-id")
DEV_KVM = Path("/dev/kvm")
CGROUP_ROOT = Path("/sys/fs/cgroup")
UNKNOWN = "unknown"
VERSION_TIMEOUT_S = 10.0

# Tool -> the arguments that print its version (first non-empty line is kept).
TOOLS: dict[str, list[str]] = {
    "runc": ["--version"],
    "crun": ["--version"],
    "fio": ["--version"],
    "stress-ng": ["--version"],
    "sysbench": ["--version"],
    "iperf3": ["--version"],
    "busybox": [],  # prints "BusyBox v1.35.0 ..." first
    "skopeo": ["--version"],
    "qemu-system-x86_64": ["--version"],
    "virsh": ["--version"],
}


def host_facts() -> dict[str, object]:
    """Everything isobench records about this host; JSON-serialisable, never raises."""
    cpuinfo = _cpuinfo()
    meminfo = _meminfo()
    return {
        "cpu_model": _probe(lambda: cpuinfo[0].get("model name", UNKNOWN)),
        "cores": os.cpu_count() or UNKNOWN,
        "physical_cores": _probe(lambda: _physical_cores(cpuinfo)),
        "smt": _probe(lambda: _smt(cpuinfo)),
        "memory_bytes": meminfo.get("MemTotal", UNKNOWN),
        "swap_bytes": meminfo.get("SwapTotal", UNKNOWN),
        "kernel": platform.release() or UNKNOWN,
        "arch": platform.machine() or UNKNOWN,
        "cgroup_version": _probe(cgroup_version),
        "governor": _probe(governor),
        "turbo": _probe(turbo),
        "thp": _probe(thp),
        "kvm": kvm(),
        "root": os.geteuid() == 0,
        "tools": tools(),
        "libvirt_python": libvirt_python(),
        "machine_id": _probe(machine_id),
    }


def _probe(fn: Callable[[], object]) -> object:
    """fn(), or "unknown" when it cannot tell (missing file, no permission, odd content)."""
    try:
        return fn()
    except (OSError, ValueError, KeyError, IndexError):
        return UNKNOWN


def _read(path: Path) -> str:
    return path.read_text().strip()


def _cpuinfo() -> list[dict[str, str]]:
    """/proc/cpuinfo as one dict per logical CPU ([{}] when unreadable)."""
    try:
        text = (PROC / "cpuinfo").read_text()
    except OSError:
        return [{}]
    cpus: list[dict[str, str]] = []
    for block in text.strip().split("\n\n"):
        entry = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                entry[key.strip()] = value.strip()
        cpus.append(entry)
    return cpus or [{}]


def _meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes ({} when unreadable)."""
    out: dict[str, int] = {}
    try:
        lines = (PROC / "meminfo").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            out[key] = int(fields[0]) * (1024 if fields[1:] == ["kB"] else 1)
    return out


def _physical_cores(cpuinfo: list[dict[str, str]]) -> int:
    """Distinct (package, core) pairs; raises KeyError when cpuinfo does not say."""
    return len({(cpu["physical id"], cpu["core id"]) for cpu in cpuinfo})


def _smt(cpuinfo: list[dict[str, str]]) -> str:
    """ "on"/"off": the kernel's smt/active, else siblings against cores per package."""
    try:
        return "on" if _read(SYS / "devices/system/cpu/smt/active") == "1" else "off"
    except OSError:
        pass
    first = cpuinfo[0]
    return "on" if int(first["siblings"]) > int(first["cpu cores"]) else "off"


def cgroup_version() -> str:
    """ "2", "1", or "1 (hybrid)" when a cgroup2 mount sits at <root>/unified next to v1."""
    mountinfo = (PROC / "self/mountinfo").read_text()
    mounts = parse_mountinfo(mountinfo)
    if not any(m.fstype in ("cgroup", "cgroup2") for m in mounts):
        return "none"
    if detect_version(CGROUP_ROOT, mountinfo) == 2:
        return "2"
    unified = str(CGROUP_ROOT / "unified")
    hybrid = any(m.mountpoint == unified and m.fstype == "cgroup2" for m in mounts)
    return "1 (hybrid)" if hybrid else "1"


def governor() -> str:
    """The CPUs' cpufreq scaling governor ("mixed: a, b" when they differ)."""
    cpus = sorted((SYS / "devices/system/cpu").glob("cpu[0-9]*/cpufreq/scaling_governor"))
    found = sorted({_read(p) for p in cpus})
    if not found:
        return "unknown (no cpufreq)"
    return found[0] if len(found) == 1 else "mixed: " + ", ".join(found)


def turbo() -> str:
    """ "on"/"off" from intel_pstate/no_turbo or cpufreq/boost; "unknown" when neither exists."""
    cpu = SYS / "devices/system/cpu"
    try:
        return "off" if _read(cpu / "intel_pstate/no_turbo") == "1" else "on"
    except OSError:
        pass
    try:
        return "on" if _read(cpu / "cpufreq/boost") == "1" else "off"
    except OSError:
        return UNKNOWN


def thp() -> str:
    """The selected transparent hugepage mode ("always [madvise] never" -> "madvise")."""
    text = _read(SYS / "kernel/mm/transparent_hugepage/enabled")
    start, end = text.index("["), text.index("]")
    return text[start + 1 : end]


def kvm() -> dict[str, object]:
    """/dev/kvm present and openable read-write; whether a guest really runs is not probed here."""
    return {
        "dev_kvm": DEV_KVM.exists() and os.access(DEV_KVM, os.R_OK | os.W_OK),
        "usable": None,
        "note": "not probed (only booting a guest tells; the vm platform does)",
    }


def tools() -> dict[str, str | None]:
    """Tool -> its version line; None when not installed, "unknown" when it gives no version."""
    return {name: tool_version(name, args) for name, args in TOOLS.items()}


def tool_version(name: str, args: list[str]) -> str | None:
    """The first non-empty line `name args` prints; None when name is not on PATH."""
    path = shutil.which(name)
    if path is None:
        return None
    try:
        proc = subprocess.run(
            [path, *args],
            capture_output=True,
            text=True,
            errors="replace",
            check=False,
            timeout=VERSION_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return UNKNOWN
    for line in (proc.stdout + "\n" + proc.stderr).splitlines():
        if line.strip():
            return line.strip()
    return UNKNOWN


def libvirt_python() -> str | None:
    """The libvirt-python version when the module is importable, else None (not imported here)."""
    if importlib.util.find_spec("libvirt") is None:
        return None
    try:
        return importlib.metadata.version("libvirt-python")
    except importlib.metadata.PackageNotFoundError:
        return UNKNOWN


def machine_id() -> str:
    """/etc/machine-id, else a hash of the hostname (results are filed under it)."""
    try:
        text = _read(MACHINE_ID)
        if text:
            return text
    except OSError:
        pass
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:32]
