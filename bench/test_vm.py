"""libvirt's own cost: create-to-agent-ready through libvirt against a plain qemu-system-x86_64.

The same kernel, initramfs, vCPUs, memory, disk (raw, cache=none, aio=threads),
agent channel and console on both sides; under TCG here. Launches go in
randomised complete blocks (both launchers once per block, shuffled order),
and the summary prints p50s, the ratio of medians with its paired bootstrap
interval, and the issue's target (libvirt <= 1.2x plain QEMU). Also: a second
connection to the embedded driver from a fresh process, capability cache warm
(target <= 2 s).

Environment: ISOBENCH_VM_BLOCKS (default 5), ISOBENCH_SEED.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.conftest import SUMMARY
from harness.stats import paired_median_ratio, percentile

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("qemu-system-x86_64") is None,
    reason="VM launches need root and qemu-system-x86_64",
)
IMAGE = "isobench/workload:latest"
READY_TIMEOUT_S = 120.0
VCPUS, MEMORY_MIB = 1, 512


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Kernel, initramfs, a formatted disk and a libvirt connection, shared by the launches."""
    from harness.image.build import build_image
    from harness.image.store import ImageStore, default_home
    from harness.vm.connection import default_uri, open_connection
    from harness.vm.guest import build_guest_initramfs
    from harness.vm.kernel import default_cache_dir, find_kernel
    from harness.vm.qemu_direct import make_scratch_disk

    store = ImageStore()
    build_image(store, tag=IMAGE)
    kernel = find_kernel(None, default_cache_dir())
    initrd = build_guest_initramfs(store, IMAGE, kernel, default_home() / "vm-initramfs")
    work = tmp_path_factory.mktemp("vmb")
    disk = make_scratch_disk(work / "d.raw", 64)
    uri = default_uri()
    conn = open_connection(uri)
    yield {"kernel": kernel, "initrd": initrd, "disk": disk, "work": work, "conn": conn, "uri": uri}
    conn.close()


def libvirt_launch(g: dict[str, Any], n: int) -> float:
    """Seconds from createXML to the agent's READY; the domain is destroyed after."""
    from harness.vm.agent import AgentClient
    from harness.vm.domain import DomainSpec, domain_name
    from harness.vm.guest import GUEST_CMDLINE

    run_id = f"bench{os.getpid()}"
    spec = DomainSpec(
        name=domain_name(run_id, n), run_id=run_id, vcpus=VCPUS, memory_mib=MEMORY_MIB,
        kernel=g["kernel"].vmlinuz, initrd=g["initrd"], cmdline=GUEST_CMDLINE, disk=g["disk"],
        agent_socket=g["work"] / f"l{n}.sock", console_log=g["work"] / f"l{n}.log",
        accel="tcg", disk_cache="none", disk_io="threads",
    )  # fmt: skip
    start = time.perf_counter()
    domain = g["conn"].createXML(spec.to_xml(), 0)
    try:
        with AgentClient.connect(spec.agent_socket, READY_TIMEOUT_S) as client:
            client.wait_ready(READY_TIMEOUT_S)
            return time.perf_counter() - start
    finally:
        domain.destroy()


def qemu_launch(g: dict[str, Any], n: int) -> float:
    """Seconds from spawning qemu-system-x86_64 to the agent's READY; QEMU is killed after."""
    from harness.vm.qemu_direct import QemuConfig, boot_to_ready

    config = QemuConfig(
        kernel=g["kernel"].vmlinuz, initramfs=g["initrd"], console_log=g["work"] / f"q{n}.log",
        vcpus=VCPUS, memory_mib=MEMORY_MIB, accel="tcg", scratch_disk=g["disk"],
        disk_cache="none", disk_aio="threads",
    )  # fmt: skip
    start = time.perf_counter()
    qemu, client, _ready = boot_to_ready(config, f"bench{os.getpid()}-{n}", READY_TIMEOUT_S)
    elapsed = time.perf_counter() - start
    client.close()
    qemu.close()
    return elapsed


def test_libvirt_against_plain_qemu_create_to_ready(guest: dict[str, Any]) -> None:
    blocks = int(os.environ.get("ISOBENCH_VM_BLOCKS", "5"))
    seed = int(os.environ.get("ISOBENCH_SEED", str(int(time.time()))))
    rng = random.Random(seed)
    launchers: dict[str, Callable[[dict[str, Any], int], float]] = {
        "libvirt": libvirt_launch,
        "qemu": qemu_launch,
    }
    times: dict[str, list[float]] = {name: [] for name in launchers}
    libvirt_launch(guest, 999)  # warm-up (page cache, QEMU's own first start), discarded
    for block in range(blocks):
        order = sorted(launchers)
        rng.shuffle(order)
        for name in order:
            times[name].append(launchers[name](guest, block))
    ratio = paired_median_ratio(times["libvirt"], times["qemu"])
    SUMMARY.append(f"vm create-to-agent-ready under TCG, {blocks} blocks, seed {seed}:")
    for name, values in times.items():
        SUMMARY.append(
            f"  {name:8s} p50 {percentile(values, 50):.3f} s  p90 {percentile(values, 90):.3f} s"
        )
    SUMMARY.append(f"  libvirt/qemu = {ratio} (target <= 1.2x)")
    assert all(t > 0 for values in times.values() for t in values)


_SECOND = """
import sys, time
t0 = time.perf_counter()
from harness.vm.connection import open_connection
t1 = time.perf_counter()
conn = open_connection(sys.argv[1])
conn.getDomainCapabilities(None, "x86_64", None, "qemu")
print(f"{time.perf_counter() - t1:.4f} {time.perf_counter() - t0:.4f}")
"""


def test_second_connection_to_the_embedded_driver(
    guest: dict[str, Any], tmp_path: Path, benchmark: Any
) -> None:
    # This process holds the default root; the fresh process opens a copy of it
    # (its capability cache included), as a second isobench run would find it.
    from harness.vm.connection import embed_root

    root = embed_root(guest["uri"])
    assert root is not None
    copy = tmp_path / "root"
    shutil.copytree(root / "cache", copy / "cache")

    def second() -> tuple[float, float]:
        out = subprocess.run(
            [sys.executable, "-c", _SECOND, f"qemu:///embed?root={copy}"],
            capture_output=True, text=True, check=True, timeout=300,
        )  # fmt: skip
        open_s, total_s = map(float, out.stdout.split())
        return open_s, total_s

    results = benchmark.pedantic(second, rounds=3, iterations=1)
    open_s, total_s = results
    SUMMARY.append(
        f"vm second connection to the embedded driver: open + domain capabilities {open_s:.3f} s "
        f"(process with imports {total_s:.3f} s; target <= 2 s)"
    )
    assert open_s > 0
