"""Does isobench time a bare workload the way an independent tool does? (issue 4's first target)

The same command (sysbench cpu at quick size, chrooted into the image) is timed
by the bare platform (`Outcome.wall_s`) and by hyperfine (`--shell=none`), in
alternating batches so that drift hits both alike. Target: medians within 1 %.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

import pytest

from bench.conftest import SUMMARY
from harness.image.build import build_image
from harness.image.store import ImageStore
from harness.platforms.bare import CHROOT, BarePlatform
from harness.platforms.base import RunContext
from harness.workloads.catalog import BENCHMARKS

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the bare platform mounts an overlay root"),
    pytest.mark.skipif(
        shutil.which("hyperfine") is None, reason="hyperfine not installed (make setup)"
    ),
]

BATCHES = int(os.environ.get("ISOBENCH_TIMING_BATCHES", "4"))
RUNS_PER_BATCH = 5


def test_bare_timing_agrees_with_hyperfine(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "home")
    digest = build_image(store, tag="isobench/workload:timing").digest
    workload = BENCHMARKS["cpu.sysbench.1thread"]("quick")
    workdir = Path(tempfile.mkdtemp(prefix="isobench-timing-"))
    platform = BarePlatform(store=store)
    ctx = RunContext("isobench/workload:timing", digest, "timing", workdir)
    platform.prepare(ctx)
    ours: list[float] = []
    theirs: list[float] = []
    try:
        command = [CHROOT, str(platform.root), *workload.argv]
        for _ in range(BATCHES):
            for _ in range(RUNS_PER_BATCH):
                outcome = platform.run(workload)
                assert outcome.exit_code == 0, outcome.stderr
                ours.append(outcome.wall_s)
            report = tmp_path / "hyperfine.json"
            subprocess.run(
                [
                    "hyperfine",
                    "--shell=none",
                    "--runs",
                    str(RUNS_PER_BATCH),
                    "--export-json",
                    str(report),
                    "--style",
                    "none",
                    " ".join(command),
                ],
                check=True,
                capture_output=True,
            )
            theirs.extend(json.loads(report.read_text())["results"][0]["times"])
    finally:
        platform.teardown()
        shutil.rmtree(workdir, ignore_errors=True)
    ratio = statistics.median(ours) / statistics.median(theirs)
    verdict = "met" if abs(ratio - 1) <= 0.01 else "NOT met"
    SUMMARY.append(
        f"timing: bare sysbench cpu, isobench median {statistics.median(ours) * 1000:.1f} ms, "
        f"hyperfine median {statistics.median(theirs) * 1000:.1f} ms over {len(ours)} runs each: "
        f"ratio {ratio:.4f} (target within 1 %: {verdict})"
    )
