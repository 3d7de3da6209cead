"""Issue 4 end to end: `isobench run` on real platforms, the report, pytest-benchmark compare, kill and resume.

The image store is the test's own (ISOBENCH_HOME under tmp), so the user's is never touched.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from harness.report import build_report, load_results
from harness.results import ResultFile
from harness.runner import WORKDIR_PREFIX, run_suite
from harness.workloads.catalog import BENCHMARKS

pytestmark = pytest.mark.requires("root", "cgroups", "busybox")

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("isobench-home")


@pytest.fixture(autouse=True)
def _own_store(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISOBENCH_HOME", str(home))


def test_smoke_run_of_every_benchmark_on_bare_and_container(tmp_path: Path) -> None:
    started = time.monotonic()
    path = run_suite(
        profile="smoke", platforms=["bare", "container"], blocks=1, results_dir=tmp_path
    )
    elapsed = time.monotonic() - started
    results = ResultFile.load(path)
    assert results.status == "complete"
    measured = [s for s in results.samples if not s.warmup]
    failed = [(s.benchmark, s.platform, s.error) for s in measured if s.error]
    assert not failed, failed
    ran = {(s.benchmark, s.platform) for s in measured}
    for name in BENCHMARKS:
        for platform in ("bare", "container"):
            assert (name, platform) in ran, (name, platform)
    assert {s.platform for s in measured if s.benchmark == "startup.launch"} == {
        "bare",
        "container",
    }
    print(f"smoke run of {len(BENCHMARKS)} benchmarks on bare and container: {elapsed:.0f} s")

    paths = build_report(load_results([path]), tmp_path / "report")
    html = paths.html.read_text()
    assert "container" in html and "bare" in html and "data:image/png;base64," in html
    assert "container/bare" in paths.markdown.read_text()

    compare = subprocess.run(
        [str(BIN / "pytest-benchmark"), "compare", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert compare.returncode == 0, compare.stderr
    assert "cpu" in compare.stdout


def test_killed_run_resumes_without_lost_or_duplicated_samples(tmp_path: Path, home: Path) -> None:
    bench = "cpu.sysbench.1thread,ipc.stress-ng.pipe"
    argv = [
        str(BIN / "isobench"),
        "run",
        "--profile",
        "smoke",
        "--platform",
        "bare,container",
        "--bench",
        bench,
        "--blocks",
        "4",
        "--results",
        str(tmp_path),
    ]
    env = {**os.environ, "ISOBENCH_HOME": str(home)}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result_file = _wait_for_samples(tmp_path, at_least=6, proc=proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = ResultFile.load(result_file)
    taken = [s.key for s in killed.samples]
    assert killed.status == "running"  # killed: no chance to say "interrupted"

    cleanup = subprocess.run(
        [str(BIN / "isobench"), "cleanup"], env=env, capture_output=True, text=True
    )
    assert cleanup.returncode == 0, cleanup.stderr
    assert not list(Path("/tmp").glob(f"{WORKDIR_PREFIX}{proc.pid}-*"))

    resumed = subprocess.run(
        [str(BIN / "isobench"), "run", "--resume", str(result_file)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    final = ResultFile.load(result_file)
    assert final.status == "complete"
    keys = [s.key for s in final.samples]
    assert keys[: len(taken)] == taken  # nothing taken before the kill was lost or changed
    counts = Counter(k for k in keys if k[0] >= 0 and k[2] != "startup.launch")
    expected = {
        (b, p, n) for b in range(4) for p in ("bare", "container") for n in bench.split(",")
    }
    assert set(counts) == expected
    assert all(c == 1 for c in counts.values()), counts  # no duplicates
    assert json.loads(result_file.read_text())["isobench"]["status"] == "complete"


def _wait_for_samples(results_dir: Path, at_least: int, proc: subprocess.Popen[bytes]) -> Path:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert proc.poll() is None, "isobench run ended before it could be killed"
        for path in results_dir.rglob("*.json"):
            try:
                if len(json.loads(path.read_text())["isobench"]["samples"]) >= at_least:
                    return path
            except (ValueError, KeyError):
                continue  # not written yet
        time.sleep(0.2)
    raise AssertionError("no samples appeared in time")
