"""A real guest under plain QEMU and TCG: the Debian kernel, the workload image's initramfs, the agent.

One boot serves the module (about 10 s here); a second boots a kernel whose
initramfs has no agent, for the bounded wait. Everything lives under one temp
dir of this module and one run id; the last checks are that no QEMU process of
ours is left (by pid) and no file either.
"""

from __future__ import annotations

import glob
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.errors import EnvironmentError_
from harness.image.build import build_image
from harness.image.initramfs import write_initramfs
from harness.image.store import ImageStore
from harness.runtime.bundle import busybox_rootfs
from harness.vm.agent import AgentClient, Ready
from harness.vm.guest import build_guest_initramfs
from harness.vm.kernel import GuestKernel, default_cache_dir, find_kernel
from harness.vm.qemu_direct import (
    QemuConfig,
    QemuGuest,
    boot_to_ready,
    make_scratch_disk,
    process_alive,
)
from harness.workloads.parsers import parse_sysbench_cpu

pytestmark = pytest.mark.requires("root", "qemu", "gcc")

RUN_ID = f"test-{uuid.uuid4().hex[:8]}"
READY_TIMEOUT_S = 180.0  # TCG on a loaded 2-core host; the boot itself takes about 10 s
TAG = "isobench/vm-test:latest"


@dataclass
class Booted:
    base: Path
    kernel: GuestKernel
    store: ImageStore
    initramfs: Path
    guest: QemuGuest
    client: AgentClient
    ready: Ready


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"isobench-{RUN_ID}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        assert glob.glob(f"/tmp/isobench-{RUN_ID}-qemu-*") == [], "QEMU work dirs left behind"


@pytest.fixture(scope="module")
def kernel() -> GuestKernel:
    return find_kernel(None, default_cache_dir())


@pytest.fixture(scope="module")
def booted(base: Path, kernel: GuestKernel) -> Iterator[Booted]:
    store = ImageStore(home=base / "home")
    build_image(store, tag=TAG)
    initramfs = build_guest_initramfs(store, TAG, kernel, base / "initramfs")
    disk = make_scratch_disk(base / "scratch.img", 64)
    config = QemuConfig(kernel.vmlinuz, initramfs, base / "console.log", scratch_disk=disk)
    guest, client, ready = boot_to_ready(config, RUN_ID, READY_TIMEOUT_S)
    booted_guest = Booted(base, kernel, store, initramfs, guest, client, ready)
    try:
        yield booted_guest
    finally:
        booted_guest.client.close()  # the reconnect test replaces the first client
        guest.close()
        assert not process_alive(guest.pid)


def test_the_agent_announces_readiness_with_the_guest_boot_clock(booted: Booted) -> None:
    assert 0.5 < booted.ready.boot_s < READY_TIMEOUT_S  # the guest's own uptime at readiness
    assert booted.client.ping() >= booted.ready.boot_s
    console = (booted.base / "console.log").read_text(errors="replace")
    assert "isobench-init: ready" in console and "insmod" not in console  # every module loaded


def test_sysbench_runs_in_the_guest_and_its_output_parses(booted: Booted) -> None:
    result = booted.client.run(["/usr/bin/sysbench", "cpu", "run", "--events=100", "--time=0"])
    assert result.exit_code == 0, result.stderr
    parsed = parse_sysbench_cpu(result.stdout)
    assert parsed["events"] == 100 and parsed["events_per_s"] > 0
    assert result.guest_wall_s > parsed["total_time_s"] > 0


def test_exit_codes_come_back(booted: Booted) -> None:
    result = booted.client.run(["/bin/sh", "-c", "exit 7"])
    assert (result.exit_code, result.stdout, result.stderr) == (7, "", "")
    assert result.guest_wall_s > 0


def test_the_scratch_disk_is_mounted_ext4_and_writable(booted: Booted) -> None:
    mounts = booted.client.fetch("/proc/mounts").decode()
    assert any(line.split()[1:3] == ["/scratch", "ext4"] for line in mounts.splitlines())
    script = (
        "dd if=/dev/zero of=/scratch/f bs=1M count=8 2>/dev/null && sync && stat -c %s /scratch/f"
    )
    result = booted.client.run(["/bin/sh", "-c", script])
    assert (result.exit_code, result.stdout) == (0, f"{8 << 20}\n")


def test_fetch_returns_guest_files(booted: Booted) -> None:
    assert booted.client.fetch("/proc/cmdline").decode().startswith("console=ttyS0")
    agent = booted.client.fetch("/usr/bin/isobench-agent")
    assert agent[:4] == b"\x7fELF"


def test_a_second_build_reuses_the_cached_initramfs(booted: Booted) -> None:
    mtime = booted.initramfs.stat().st_mtime_ns
    again = build_guest_initramfs(booted.store, TAG, booted.kernel, booted.initramfs.parent)
    assert again == booted.initramfs and again.stat().st_mtime_ns == mtime


def test_a_new_connection_is_greeted_with_ready_again(booted: Booted) -> None:
    booted.client.close()
    booted.client = AgentClient.connect(booted.guest.agent_socket, 10)
    again = booted.client.wait_ready(30)
    assert again.boot_s == booted.ready.boot_s  # the first readiness, not the reconnect
    assert booted.client.run(["/bin/true"]).exit_code == 0


def test_poweroff_ends_qemu_and_leaves_nothing(booted: Booted) -> None:
    booted.client.poweroff()
    assert booted.guest.wait_exit(60) == 0
    assert not process_alive(booted.guest.pid)
    booted.guest.close()
    assert not booted.guest.work_dir.exists()


def test_a_guest_that_never_gets_ready_is_a_bounded_one_line_error(
    base: Path, kernel: GuestKernel
) -> None:
    root = busybox_rootfs(base / "noagent-root")
    initramfs = base / "noagent.cpio.gz"
    # Boots to a running init that never starts an agent (and never powers off).
    write_initramfs(
        root, initramfs, init_script="#!/bin/sh\necho no-agent-here\nexec sleep 100000\n"
    )
    console = base / "noagent-console.log"
    config = QemuConfig(kernel.vmlinuz, initramfs, console, cmdline="console=ttyS0 panic=-1")
    before = set(glob.glob(f"/tmp/isobench-{RUN_ID}-qemu-*"))
    with pytest.raises(EnvironmentError_) as caught:
        boot_to_ready(config, RUN_ID, ready_timeout_s=25)
    message = str(caught.value)
    assert "\n" not in message and "never became ready within 25 s" in message
    assert str(console) in message
    assert "no-agent-here" in console.read_text(errors="replace")  # the kernel booted; log kept
    assert set(glob.glob(f"/tmp/isobench-{RUN_ID}-qemu-*")) == before
    assert _qemu_pids_named(f"isobench-{RUN_ID}-qemu") == []  # QEMU killed, not left running


def _qemu_pids_named(name: str) -> list[int]:
    """Processes whose command line carries this QEMU -name (ours only: the run id is unique)."""
    found = []
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            if f"guest={name}".encode() in Path(path).read_bytes():
                found.append(int(path.split("/")[2]))
        except OSError:
            continue
    return found
