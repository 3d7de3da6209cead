"""The cgroup driver against the host's real cgroupfs: the kernel enforces what we wrote.

Every cgroup made here is /isobench-test-<pid>-<random> and is removed in `finally`,
whatever the test did, and the fixture checks that no directory is left behind.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.runtime.cgroups import CgroupManager, new_manager
from harness.runtime.spec import CpuResources, MemoryResources, PidsResources, Resources

pytestmark = pytest.mark.requires("root", "cgroups")

MIB = 1 << 20


@pytest.fixture
def manager() -> Iterator[CgroupManager]:
    m = new_manager(f"/isobench-test-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        m.create()
        yield m
    finally:
        try:
            m.kill_all(signal.SIGKILL)
        finally:
            m.destroy()
        left = [d for d in m.paths().values() if os.path.exists(d)]
        assert not left, f"cgroup directories left behind: {left}"


def control(m: CgroupManager, controller: str, name: str) -> str:
    """A control file as the kernel reads it back (controller names the v1 hierarchy)."""
    directory = m.paths()[controller if m.version == 1 else ""]
    return Path(directory, name).read_text().strip()


def frozen(m: CgroupManager) -> bool:
    """The kernel's own view: v1 freezer.state, v2 cgroup.events."""
    if m.version == 1:
        return control(m, "freezer", "freezer.state") == "FROZEN"
    return "frozen 1" in control(m, "", "cgroup.events").splitlines()


def test_limits_membership_freeze_and_kill(manager: CgroupManager) -> None:
    manager.set(
        Resources(
            cpu=CpuResources(quota=50000, period=100000),
            memory=MemoryResources(limit=64 * MIB),
            pids=PidsResources(limit=32),
        )
    )
    if manager.version == 1:
        assert control(manager, "cpu", "cpu.cfs_quota_us") == "50000"
        assert control(manager, "cpu", "cpu.cfs_period_us") == "100000"
        assert control(manager, "memory", "memory.limit_in_bytes") == str(64 * MIB)
    else:
        assert control(manager, "cpu", "cpu.max") == "50000 100000"
        assert control(manager, "memory", "memory.max") == str(64 * MIB)
    assert control(manager, "pids", "pids.max") == "32"

    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        manager.apply(sleeper.pid)
        assert manager.pids() == [sleeper.pid]
        assert manager.stats().pids_current == 1

        manager.freeze()
        assert frozen(manager)
        manager.thaw()
        assert not frozen(manager)

        manager.freeze()  # kill_all must reach frozen tasks too
        manager.kill_all(signal.SIGKILL)
        assert sleeper.wait(timeout=10) == -signal.SIGKILL
        assert manager.pids() == []
    finally:
        sleeper.kill()
        sleeper.wait()
    manager.destroy()
    assert not manager.exists()


def test_memory_limit_oom_kills(manager: CgroupManager) -> None:
    limit = 32 * MIB
    # swap == limit: no swap, so the allocation cannot escape to swap instead of OOM.
    manager.set(Resources(memory=MemoryResources(limit=limit, swap=limit)))
    hog = (
        "b = bytearray(128 << 20)\n"
        "b[::4096] = b'x' * (len(b) // 4096)\n"  # touch every page: calloc'd pages cost nothing
        "print('survived')\n"
    )
    # preexec_fn runs in the child before exec: the interpreter starts inside the cgroup.
    proc = subprocess.run(
        [sys.executable, "-c", hog],
        preexec_fn=lambda: manager.apply(0),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    stats = manager.stats()
    assert stats.memory_oom_kill is not None and stats.memory_oom_kill >= 1
    assert stats.memory_peak_bytes is not None and stats.memory_peak_bytes <= limit
