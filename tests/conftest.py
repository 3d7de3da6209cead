"""The capability vocabulary for integration tests (runc's bats `requires root cgroups_swap`).

`@pytest.mark.requires("root", "cgroup_v1")` skips with the missing capability as
the reason. CI runs as root on a v1-hybrid host, so these tests really run there.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest


def _cgroup_version() -> int | None:
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    if any(line.split()[1] == "/sys/fs/cgroup" and line.split()[2] == "cgroup2" for line in mounts):
        return 2
    if any(line.split()[2] == "cgroup" for line in mounts):
        return 1
    return None


def _seccomp() -> bool:
    import ctypes.util

    return ctypes.util.find_library("seccomp") is not None


CAPABILITIES: dict[str, Callable[[], bool]] = {
    "root": lambda: os.geteuid() == 0,
    "cgroup_v1": lambda: _cgroup_version() == 1,
    "cgroup_v2": lambda: _cgroup_version() == 2,
    "cgroups": lambda: _cgroup_version() is not None,
    "runc": lambda: shutil.which("runc") is not None,
    "crun": lambda: shutil.which("crun") is not None,
    "busybox": lambda: shutil.which("busybox") is not None,
    "iproute2": lambda: shutil.which("ip") is not None,
    "seccomp": _seccomp,
    "gcc": lambda: shutil.which("gcc") is not None,
    "qemu": lambda: shutil.which("qemu-system-x86_64") is not None,
    "libvirt": lambda: importlib.util.find_spec("libvirt") is not None,
}


@functools.cache
def has(capability: str) -> bool:
    """Whether this host has the named capability."""
    if capability not in CAPABILITIES:
        raise pytest.UsageError(
            f"unknown requires() capability {capability!r}; known: {sorted(CAPABILITIES)}"
        )
    return CAPABILITIES[capability]()


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers(name="requires"):
        missing = [cap for cap in marker.args if not has(cap)]
        if missing:
            pytest.skip(f"requires {', '.join(missing)}")
