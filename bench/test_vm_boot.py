"""Plain-QEMU guest boot to agent ready, under TCG here (issue 5's baseline for libvirt's create-to-ready).

Each round is a cold boot: qemu-system-x86_64 starts with the Debian kernel, the
workload image's initramfs (cached) and the same devices as the libvirt domain,
until the agent's READY arrives; then the guest powers off. Printed, not asserted:
host create-to-ready, the guest's own boot clock at readiness, and create-to-exit.
The KVM target (at most 150 ms to agent ready) is not measurable on these hosts.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from bench.conftest import SUMMARY
from harness.image.build import build_image
from harness.image.store import ImageStore
from harness.vm.guest import build_guest_initramfs
from harness.vm.kernel import default_cache_dir, find_kernel
from harness.vm.qemu_direct import QemuConfig, boot_to_ready

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the image build mounts overlays: root")

BOOTS = int(os.environ.get("ISOBENCH_VM_BOOTS", "3"))
ACCEL = os.environ.get("ISOBENCH_VM_ACCEL", "tcg")
TAG = "isobench/workload:bench-vm"


def test_plain_qemu_boot_to_agent_ready(
    benchmark: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Cold boots to READY; the benchmark's figure is create-to-exit (boot, READY, power off)."""
    base = tmp_path_factory.mktemp("vm-boot")
    store = ImageStore(base / "home")
    build_image(store, tag=TAG)
    kernel = find_kernel(None, default_cache_dir())
    initramfs = build_guest_initramfs(store, TAG, kernel, base / "initramfs")
    run_id = f"bench-{uuid.uuid4().hex[:8]}"
    to_ready_s: list[float] = []
    guest_boot_s: list[float] = []

    def one_boot() -> None:
        console = Path(tempfile.mkstemp(prefix="console-", dir=base)[1])
        config = QemuConfig(kernel.vmlinuz, initramfs, console, accel=ACCEL)
        start = time.monotonic()
        guest, client, ready = boot_to_ready(config, run_id, 300.0)
        try:
            to_ready_s.append(ready.host_monotonic_s - start)
            guest_boot_s.append(ready.boot_s)
            client.poweroff()
            guest.wait_exit(60)
        finally:
            client.close()
            guest.close()

    benchmark.group = "vm boot"
    benchmark.pedantic(one_boot, rounds=BOOTS, iterations=1)
    SUMMARY.append(
        f"vm (plain QEMU, accel={ACCEL}, {BOOTS} cold boots, kernel {kernel.version}): "
        f"create-to-agent-ready median {statistics.median(to_ready_s):.2f} s "
        f"(min {min(to_ready_s):.2f}, max {max(to_ready_s):.2f}); "
        f"guest boot clock at ready median {statistics.median(guest_boot_s):.2f} s; "
        f"create-to-exit median {benchmark.stats.stats.median:.2f} s"
    )
