"""The vm enforcement adapter for real: a half-CPU quota on a TCG guest, judged, and nothing left.

It runs in a subprocess: libvirt's embedded driver allows one embed root per
process, and test_vm.py's module holds another in this one.
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_vm import IMAGE, qemu_pids

pytestmark = [
    pytest.mark.requires("root", "cgroup_v1", "qemu", "libvirt"),
    pytest.mark.timeout(600),
]

SCRIPT = """
import json, sys
from pathlib import Path
from harness.enforcement.adapter_vm import VmAdapter
from harness.enforcement.env import Durations, Env
from harness.enforcement.suite_cpu_memory import cpu_quota_retried
from harness.image.store import ImageStore
from harness.platforms.base import RunContext

run_id, workdir, image = sys.argv[1:4]
adapter = VmAdapter()
ok, why = adapter.available()
assert ok, why
ctx = RunContext(image_ref=image, image_digest=ImageStore().resolve(image), run_id=run_id,
                 workdir=Path(workdir))
try:
    adapter.prepare(ctx)
    record = cpu_quota_retried(adapter, Env(Durations(cpu_quota_s=3.0), None), 0.5)
    jobs = adapter.describe()["jobs"]
finally:
    adapter.teardown()
print(json.dumps({"record": record.to_json(), "jobs": jobs}))
"""


@pytest.fixture
def home() -> Iterator[Path]:
    """A short home: QEMU's monitor socket path under it must fit in 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="isobench-tvm-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_half_cpu_quota_holds_on_a_tcg_guest_and_no_guest_is_left(
    home: Path, tmp_path: Path
) -> None:
    from harness.image.build import build_image
    from harness.image.store import ImageStore

    env = {**os.environ, "ISOBENCH_HOME": str(home)}
    os.environ["ISOBENCH_HOME"], old = str(home), os.environ.get("ISOBENCH_HOME")
    try:
        build_image(ImageStore(), tag=IMAGE)
    finally:
        if old is None:
            os.environ.pop("ISOBENCH_HOME")
        else:
            os.environ["ISOBENCH_HOME"] = old
    run_id = "t" + secrets.token_hex(4)
    workdir = tmp_path / "w"
    workdir.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, run_id, str(workdir), IMAGE],
        env=env, capture_output=True, text=True, timeout=500, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    record = out["record"]
    assert record["verdict"] == "pass", record["reason"]
    assert abs(record["measured"] - 0.5) <= 0.025
    assert record["details"]["window_s"][1] - record["details"]["window_s"][0] >= 1.0
    # Requested 0.5 CPU -> one vCPU whose cgroup holds 50000 us per 100000 us.
    assert record["effective"]["cpu.cfs_quota_us"] == "50000"
    (job,) = out["jobs"].values()
    assert job["effective"]["vcpus"] == 1 and job["effective"]["total_cpus"] == 0.5
    assert qemu_pids(run_id) == []
    assert glob.glob(f"/sys/fs/cgroup/*/machine/*{run_id}*") == []
