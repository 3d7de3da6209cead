"""`isobench cleanup`'s mount sweep on paths the kernel escapes in mountinfo."""

from __future__ import annotations

import contextlib
import secrets
import subprocess
from pathlib import Path

import pytest

from harness.platforms.common import mounts_under
from harness.runtime.cleanup import _unmount_below

pytestmark = pytest.mark.requires("root")


def test_mounts_under_a_path_with_a_space_are_detached(tmp_path: Path) -> None:
    base = tmp_path / "killed run"  # mountinfo writes this as killed\040run
    inner = base / "view" / "proc"
    inner.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(base / "view")], check=True)
    try:
        inner.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(inner)], check=True)
        assert len(mounts_under(base)) == 2
        _unmount_below(base)
        assert mounts_under(base) == []
    finally:
        subprocess.run(["umount", "-R", str(base / "view")], capture_output=True, check=False)


@pytest.mark.requires("cgroups")
def test_cleanup_removes_an_empty_libvirt_cgroup_of_a_killed_guest() -> None:
    """What a guest whose QEMU died unwatched leaves: libvirt's cgroup, empty, with children."""
    from harness.runtime.cleanup import _sweep_mounts, sweep_machine_cgroups

    run_id = f"t{secrets.token_hex(4)}"
    name = f"qemu-embed-0badc0de-1-isobench-{run_id}-vm0.libvirt-qemu"
    mounts = _sweep_mounts()
    made, parents = [], []
    for mount in mounts:
        machine = Path(mount) / "machine"
        if not machine.is_dir():  # libvirt has not run on this host yet
            machine.mkdir()
            parents.append(machine)
        top = machine / name
        top.mkdir()
        made.append(top)
        with contextlib.suppress(OSError):  # cpu and cpuset hold the per-thread children
            (top / "vcpu0").mkdir()
    try:
        # Only this test's: the host may hold other runs' guests right now.
        kept = list(sweep_machine_cgroups(mounts, run_id=run_id))
        assert kept == [f"kept cgroup /machine/{name}: made less than 60 s ago"]
        assert all(path.is_dir() for path in made)
        lines = list(sweep_machine_cgroups(mounts, run_id=run_id, min_age_s=0))
        assert lines == [f"removed cgroup /machine/{name}"]
        assert not any(path.exists() for path in made)
    finally:
        for path in made:
            with contextlib.suppress(OSError):
                (path / "vcpu0").rmdir()
            with contextlib.suppress(OSError):
                path.rmdir()
        for machine in parents:
            with contextlib.suppress(OSError):
                machine.rmdir()
