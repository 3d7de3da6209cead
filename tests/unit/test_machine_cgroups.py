"""The sweep of libvirt's machine cgroups of isobench guests, on a fake tree in tmp_path."""

from __future__ import annotations

from pathlib import Path

from harness.runtime.cleanup import sweep_machine_cgroups

RUN = "20261128T032310Z-4b8a1c"
OURS = f"qemu-embed-362f0f24-1-isobench-{RUN}-vm0.libvirt-qemu"
OTHER_RUN = "qemu-embed-52d12dfa-3-isobench-20261128T041502Z-a22f83-vm1.libvirt-qemu"
SYSTEM = f"qemu-7-isobench-{RUN}-vm2.libvirt-qemu"  # qemu:///system: no embed hash
FOREIGN = "qemu-2-webserver.libvirt-qemu"


def make_guest(mount: Path, name: str, procs: str = "") -> Path:
    """A guest's cgroup as libvirt lays it out on a v1 cpu hierarchy: emulator and vcpuN below.

    Only a busy one gets a cgroup.procs file: a plain directory holding files cannot
    be rmdir'ed, a cgroup can (tests/integration/test_cleanup.py does it for real).
    """
    top = mount / "machine" / name
    for sub in ("", "emulator", "vcpu0", "vcpu1"):
        (top / sub).mkdir(parents=True, exist_ok=True)
    if procs:
        (top / "emulator" / "cgroup.procs").write_text(procs)
    return top


def test_empty_cgroups_of_isobench_guests_go_busy_and_foreign_ones_stay(tmp_path: Path) -> None:
    cpu, memory = tmp_path / "cpu", tmp_path / "memory"
    ours = [make_guest(cpu, OURS), make_guest(memory, OURS)]
    system = make_guest(cpu, SYSTEM)
    busy = make_guest(cpu, OTHER_RUN, procs="4242\n")
    foreign = make_guest(cpu, FOREIGN)

    dry = list(sweep_machine_cgroups([str(cpu), str(memory)], dry_run=True, min_age_s=0))
    assert f"would remove cgroup /machine/{OURS}" in dry
    assert all(path.is_dir() for path in ours)

    lines = list(sweep_machine_cgroups([str(cpu), str(memory)], min_age_s=0))
    assert lines == [  # by name
        f"removed cgroup /machine/{SYSTEM}",
        f"removed cgroup /machine/{OURS}",
        f"kept cgroup /machine/{OTHER_RUN}: a guest still runs in it",
    ]
    assert not any(path.exists() for path in [*ours, system])
    assert busy.is_dir() and foreign.is_dir()


def test_a_run_sweeps_only_its_own_guests(tmp_path: Path) -> None:
    ours = make_guest(tmp_path, OURS)
    other = make_guest(tmp_path, OTHER_RUN)
    assert list(sweep_machine_cgroups([str(tmp_path)], run_id=RUN, min_age_s=0)) == [
        f"removed cgroup /machine/{OURS}"
    ]
    assert not ours.exists() and other.is_dir()


def test_no_machine_parent_is_nothing_to_do(tmp_path: Path) -> None:
    assert list(sweep_machine_cgroups([str(tmp_path / "absent")])) == []


def test_a_cgroup_made_a_moment_ago_is_kept(tmp_path: Path) -> None:
    """Another run's guest may be starting in it: libvirt makes it before QEMU joins."""
    young = make_guest(tmp_path, OURS)
    assert list(sweep_machine_cgroups([str(tmp_path)])) == [
        f"kept cgroup /machine/{OURS}: made less than 60 s ago"
    ]
    assert young.is_dir()
