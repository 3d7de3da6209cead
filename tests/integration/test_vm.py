"""The vm platform for real: TCG guests through libvirt's embedded driver, workloads through the agent.

One guest is booted for the module (a boot under TCG takes several seconds);
the CLI tests run `isobench run` in subprocesses against an embed root of
their own (libvirt lets one process hold an embed root, and this process
holds the module's). The image store is the module's own (ISOBENCH_HOME).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.errors import EnvironmentError_, UserError
from harness.platforms.base import RunContext
from harness.platforms.vm import VmOptions, VmPlatform
from harness.results import ResultFile
from harness.vm.connection import open_connection
from harness.workloads import workloads

pytestmark = [
    pytest.mark.requires("root", "qemu", "libvirt"),
    pytest.mark.timeout(600),
]
BIN = Path(sys.executable).parent
IMAGE = "isobench/workload:latest"


def qemu_pids(marker: str) -> list[int]:
    """QEMU processes whose command line mentions marker (an embed root or a run id)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmdline.split(b"\0")[0] and marker.encode() in cmdline:
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("vm-home")
    old = os.environ.get("ISOBENCH_HOME")
    os.environ["ISOBENCH_HOME"] = str(path)
    from harness.image.build import build_image
    from harness.image.store import ImageStore

    build_image(ImageStore(), tag=IMAGE)
    yield path
    if old is None:
        os.environ.pop("ISOBENCH_HOME", None)
    else:
        os.environ["ISOBENCH_HOME"] = old


@pytest.fixture(scope="module")
def uri(home: Path) -> str:
    return f"qemu:///embed?root={home / 'libvirt'}"


def context(tmp: Path, run_id: str) -> RunContext:
    from harness.image.store import ImageStore

    digest = ImageStore().resolve(IMAGE)
    return RunContext(image_ref=IMAGE, image_digest=digest, run_id=run_id, workdir=tmp)


@pytest.fixture(scope="module")
def vm(home: Path, uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VmPlatform]:
    platform = VmPlatform(VmOptions(uri=uri, accel="tcg"))
    run_id = f"t{os.getpid()}-mod"
    platform.prepare(context(tmp_path_factory.mktemp("vmrun"), run_id))
    yield platform
    platform.teardown()
    assert not qemu_pids(run_id)


def test_a_workload_runs_in_the_tcg_guest_and_is_measured(vm: VmPlatform) -> None:
    (workload,) = workloads(["cpu.sysbench.1thread"], "smoke")
    outcome = vm.run(workload)
    assert outcome.exit_code == 0, outcome.stderr
    assert workload.parse(outcome.stdout)["events_per_s"] > 0
    assert outcome.resources["guest_wall_s"] > 0
    assert outcome.resources["vm_cpu_time_s"] > 0.1  # libvirt saw the guest burn CPU
    described = vm.describe()
    assert described["accel"] == "tcg" and "--accel tcg" in str(described["accel_reason"])
    assert len(str(described["xml_sha256"])) == 64
    assert described["versions"]


def test_volume_io_lands_on_the_virtio_disk(vm: VmPlatform) -> None:
    (workload,) = workloads(["io.fio.seqwrite.volume"], "smoke")
    outcome = vm.run(workload)
    assert outcome.exit_code == 0, outcome.stderr
    assert workload.parse(outcome.stdout)
    assert outcome.resources["vm_block_0_wr_bytes"] >= 1 << 20


def test_loopback_is_up_in_the_guest_for_the_tcp_benchmarks(vm: VmPlatform) -> None:
    (workload,) = workloads(["ipc.stress-ng.tcp-loopback"], "smoke")
    outcome = vm.run(workload)
    assert outcome.exit_code == 0, outcome.stderr
    assert workload.parse(outcome.stdout)["bogo_ops_per_s_real"] > 0


def test_a_cold_boot_is_timed_and_leaves_nothing(vm: VmPlatform) -> None:
    conn = vm._conn
    before = {d.name() for d in conn.listAllDomains()}
    latency_s = vm.launch_latency()
    cold = vm.describe()["cold_starts"]
    assert isinstance(cold, dict) and cold["count"] == 1
    ready_s = cold["create_to_ready_s"]["p50"]
    assert 0 < ready_s < latency_s
    assert 0 < cold["guest_boot_s"]["p50"] < latency_s
    assert {d.name() for d in conn.listAllDomains()} == before


def test_a_guest_that_is_never_ready_is_destroyed_and_its_console_saved(
    home: Path, uri: str, tmp_path: Path
) -> None:
    results = tmp_path / "results"
    platform = VmPlatform(VmOptions(uri=uri, accel="tcg", results_dir=results, ready_timeout_s=0.5))
    run_id = f"t{os.getpid()}-slow"
    with pytest.raises(EnvironmentError_, match=r"not ready within 0.5 s.*console log: ") as err:
        platform.prepare(context(tmp_path / "w", run_id))
    assert "\n" not in str(err.value)
    saved = list(results.glob(f"isobench-{run_id}-vm*-console.log"))
    assert saved and saved[0].is_file()
    conn = open_connection(uri)
    assert not [d for d in conn.listAllDomains() if run_id in d.name()]
    assert not qemu_pids(run_id)


def test_a_file_that_is_no_kernel_is_refused_and_nothing_runs(
    home: Path, uri: str, tmp_path: Path
) -> None:
    bogus = tmp_path / "vmlinuz"
    bogus.write_bytes(b"not a kernel" * 100)
    platform = VmPlatform(VmOptions(uri=uri, accel="tcg", guest_kernel=bogus))
    run_id = f"t{os.getpid()}-nokernel"
    with pytest.raises(UserError, match="accepted: a bzImage"):
        platform.prepare(context(tmp_path / "w", run_id))
    assert not qemu_pids(run_id)
    assert not (tmp_path / "w" / "vm").exists()


def run_cli(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ISOBENCH_HOME": str(home)}
    proc = subprocess.run(
        [str(BIN / "isobench"), *args], env=env, capture_output=True, text=True, timeout=400
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def short_root() -> Iterator[Path]:
    """An embed root of its own, short: libvirt's monitor sockets live under it."""
    root = Path(tempfile.mkdtemp(prefix="ib-embed-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_cli_smoke_run_on_vm_is_labelled_tcg_and_killed_runs_are_swept(
    home: Path, tmp_path: Path, short_root: Path
) -> None:
    root = short_root  # not the module's: that one is held by this process
    cli_uri = f"qemu:///embed?root={root}"
    out = run_cli(
        home, "run", "--profile", "smoke", "--platform", "vm", "--bench",
        "cpu.sysbench.1thread", "--libvirt-uri", cli_uri, "--results", str(tmp_path / "r"),
    )  # fmt: skip
    result = ResultFile.load(Path(out.stdout.strip().splitlines()[-1]))
    assert result.info["platforms"]["vm"]["accel"] == "tcg"
    measured = [s for s in result.samples if not s.warmup]
    assert measured and all(s.error is None for s in measured)
    assert all(s.metrics["events_per_s"] > 0 for s in measured)
    assert not qemu_pids(str(root))

    # SIGKILL mid-run: the guest outlives isobench, `isobench cleanup` removes it.
    env = {**os.environ, "ISOBENCH_HOME": str(home)}
    argv = [
        str(BIN / "isobench"), "run", "--profile", "smoke", "--platform", "vm", "--bench",
        "cpu.sysbench.1thread", "--blocks", "5", "--libvirt-uri", cli_uri,
        "--results", str(tmp_path / "k"),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not _has_samples(tmp_path / "k"):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert qemu_pids(str(root)), "the guest should outlive a SIGKILLed isobench"
    swept = run_cli(home, "cleanup", "--libvirt-uri", cli_uri)
    assert "removed domain isobench-" in swept.stdout
    assert not qemu_pids(str(root))
    listed = subprocess.run(
        [sys.executable, "-c", _LIST_DOMAINS, cli_uri], capture_output=True, text=True, timeout=120
    )
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []


_LIST_DOMAINS = """
import json, sys
from harness.vm.connection import open_connection
print(json.dumps([d.name() for d in open_connection(sys.argv[1]).listAllDomains()]))
"""


def _has_samples(results: Path) -> bool:
    for path in results.glob("*/*.json"):
        try:
            data: Any = json.loads(path.read_text())
        except ValueError:
            continue
        if data["isobench"]["samples"]:
            return True
    return False
