"""Enforcement smoke on the real kernel: OOM kill, pids limit and a short CPU quota on container, bare and runc.

Each platform's adapter applies the same OCI request; the verdicts and the
measured values are asserted, and nothing carrying the run id may remain.
The image store and the workdir base are test_platforms' fixtures (one build per module).
"""

from __future__ import annotations

import glob
import json
import secrets
import statistics
import subprocess
import tempfile
from pathlib import Path

import pytest

from harness.enforcement.adapter_bare import BareAdapter
from harness.enforcement.adapter_container import ContainerAdapter
from harness.enforcement.adapter_oci import OciAdapter
from harness.enforcement.adapters import Adapter
from harness.enforcement.env import Durations, Env
from harness.enforcement.model import PASS
from harness.enforcement.suite_cpu_memory import cpu_quota_retried, memory_hard_limit
from harness.enforcement.suite_tasks_io import pids
from harness.image.store import ImageStore
from harness.platforms.base import RunContext
from tests.integration import test_platforms as shared

pytestmark = pytest.mark.requires("root", "cgroup_v1", "runc", "busybox")

# test_platforms' fixtures, instantiated again for this module: a store with the image, and a
# base directory outside pytest's basetemp (a concurrent session may sweep that).
base, store, TAG = shared.base, shared.store, shared.TAG

SHORT = Durations(cpu_quota_s=2.5)


def _adapter(name: str, store: ImageStore) -> Adapter:
    if name == "bare":
        return BareAdapter(store)
    if name == "container":
        return ContainerAdapter(store)
    return OciAdapter("runc", store)


def _leftovers(run_id: str) -> list[str]:
    return glob.glob(f"/sys/fs/cgroup/*/*{run_id}*") + glob.glob(f"/sys/fs/cgroup/*/*/*{run_id}*")


@pytest.mark.parametrize("name", ["container", "bare", "oci:runc"])
def test_oom_pids_and_cpu_quota_are_enforced(name: str, store: ImageStore, base: Path) -> None:
    adapter = _adapter(name, store)
    ok, reason = adapter.available()
    assert ok, reason  # all three run on this machine: a skip would hide a regression
    run_id = "t" + secrets.token_hex(4)
    workdir = Path(tempfile.mkdtemp(dir=base))
    ctx = RunContext(image_ref=TAG, image_digest="", run_id=run_id, workdir=workdir)
    env = Env(SHORT, None, "no IO device in this test")
    try:
        adapter.prepare(ctx)
        oom = memory_hard_limit(adapter, env)[0]
        tasks = pids(adapter, env)[0]
        # Half a CPU (the table's): a quarter CPU over two hog threads runs about 5 % short
        # here on every platform, the kernel's per-CPU quota slices expiring unused.
        quota = cpu_quota_retried(adapter, env, 0.5)
    finally:
        adapter.teardown()
    assert oom.verdict == PASS, oom.reason
    assert oom.details["oom_kill"] >= 1 and oom.measured is not None and oom.measured <= 64.0
    assert oom.details["exit_code"] == 137  # dd itself was the one killed
    assert oom.effective["memory.limit_in_bytes"] == str(64 << 20)
    assert tasks.verdict == PASS, tasks.reason
    assert tasks.measured is not None and 30 <= tasks.measured <= 32
    assert tasks.effective["pids.max"] == "32"
    assert quota.verdict == PASS, quota.reason
    assert quota.measured == pytest.approx(0.5, rel=0.05)
    assert quota.effective["cpu.cfs_quota_us"] == "50000"
    assert (
        quota.series["host_busy_j"][-1] > quota.series["host_busy_j"][0]
    )  # the host's CPU, sampled alongside
    steps = [b - a for a, b in zip(quota.series["t_s"], quota.series["t_s"][1:], strict=False)]
    assert statistics.median(steps) <= 0.1  # sampled at 10 Hz or faster
    assert _leftovers(run_id) == []


def test_enforce_run_writes_records_into_the_results_file(
    store: ImageStore, base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.enforcement.run import run_enforcement

    monkeypatch.setenv("ISOBENCH_HOME", str(store.home))
    results = base / "results"
    path, records = run_enforcement(
        profile="smoke", platforms=["container"], tests=["pids", "memory.high"],
        results_dir=results, image_ref=TAG,
    )  # fmt: skip
    doc = json.loads(path.read_text())
    section = doc["isobench"]
    assert section["schema_version"] == 2 and section["status"] == "complete"
    saved = {(r["test"], r["platform"]): r for r in section["enforcement"]}
    assert saved[("pids", "container")]["verdict"] == PASS
    assert saved[("memory.high", "container")]["verdict"] == "not applicable"
    assert "cgroup v1 has no memory.high" in saved[("memory.high", "container")]["reason"]
    assert len(saved[("pids", "container")]["series"]["t_s"]) >= 10
    assert [r.test for r in records] == ["memory.high", "pids"]
    assert not glob.glob(f"/tmp/isobench-run-*{section['run_id']}*")
    assert (
        section["run_id"]
        not in subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    )


def test_loop_device_is_detached_at_the_end_and_by_the_sweep(base: Path) -> None:
    from harness.enforcement.iodev import detach_loops_under, loop_device

    def attached(directory: Path) -> bool:
        listing = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
        return str(directory) in listing

    workdir = Path(tempfile.mkdtemp(dir=base))
    with loop_device(workdir, "t1") as (device, why):
        assert device is not None, why
        assert attached(workdir)
    assert not attached(workdir) and list(workdir.iterdir()) == []
    # What a SIGKILLed run leaves: a loop device over a file in its workdir; cleanup's sweep detaches it.
    backing = workdir / "isobench-io-t2.img"
    backing.write_bytes(b"\0" * (1 << 20))
    subprocess.run(["losetup", "--find", str(backing)], check=True)
    assert attached(workdir)
    assert len(detach_loops_under(workdir)) == 1
    assert not attached(workdir)
