"""Container launch-to-exit of /bin/true: the in-house runtime against runc and crun.

Same busybox bundle, same isolation for every runtime: pid, network, ipc, uts,
mount and cgroup namespaces, a cgroup with a 64 MiB memory limit, runc's
default masked/read-only paths, capabilities, no_new_privs.

Two kinds of figures:
- one pytest-benchmark test per launcher (its own table, `pytest-benchmark compare` reads it);
- `test_side_by_side`: randomised complete blocks (MEASUREMENT.md), every
  launcher once per block in a shuffled order with a recorded seed, then
  p50/p90/p99 and the ratio of medians with a 95 % paired bootstrap interval.
  These are the figures to quote; the targets of issue 2 are checked there.

Environment: ISOBENCH_STARTUP_BLOCKS (default 40), ISOBENCH_STARTUP_ROUNDS (default 30),
ISOBENCH_SEED (default: time-based, printed).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench.conftest import SUMMARY
from harness.platforms.oci_runtimes import ReferenceRuntime
from harness.runtime.bundle import busybox_bundle
from harness.runtime.lifecycle import CGROUP_PARENT, Runtime
from harness.runtime.spec_load import load_bundle
from harness.stats import paired_median_ratio, percentile

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="container launches need root")

BLOCKS = int(os.environ.get("ISOBENCH_STARTUP_BLOCKS", "40"))
ROUNDS = int(os.environ.get("ISOBENCH_STARTUP_ROUNDS", "30"))
SEED = int(os.environ.get("ISOBENCH_SEED", str(time.time_ns() % 1_000_000)))
MEMORY_LIMIT = 64 << 20
RUNTIME_CLI = str(Path(sys.executable).with_name("isobench-runtime"))
_ids = itertools.count()

Launcher = Callable[[], float]  # one cold launch-to-exit; returns seconds


def _next_id(prefix: str) -> str:
    return f"isobench-bench-{os.getpid()}-{prefix}-{next(_ids)}"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("startup")


@pytest.fixture(scope="module")
def bundle(workdir: Path) -> Path:
    """runc refuses a rootfs reached through a symlink, so the bundle holds a real copy."""
    return busybox_bundle(workdir / "bundle", ["/bin/true"], memory_limit=MEMORY_LIMIT)


@pytest.fixture(scope="module")
def launchers(workdir: Path, bundle: Path) -> Iterator[dict[str, Launcher]]:
    """name -> launcher; a runtime that cannot run here is left out with its reason in the summary."""
    spec = load_bundle(str(bundle))
    runtime = Runtime(root=str(workdir / "state-inprocess"))
    refs = [
        ReferenceRuntime(name, root=str(workdir / f"state-{name}")) for name in ("runc", "crun")
    ]

    def bare() -> float:
        start = time.perf_counter()
        pid = os.posix_spawn("/bin/true", ["true"], {})
        os.waitpid(pid, 0)
        return time.perf_counter() - start

    def in_process() -> float:
        start = time.perf_counter()
        code = runtime.run(spec, _next_id("api"))
        elapsed = time.perf_counter() - start
        assert code == 0
        return elapsed

    def cli() -> float:
        argv = [
            RUNTIME_CLI,
            "--root",
            str(workdir / "state-cli"),
            "run",
            "--bundle",
            str(bundle),
            _next_id("cli"),
        ]
        start = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, check=False)
        elapsed = time.perf_counter() - start
        assert proc.returncode == 0, proc.stderr
        return elapsed

    found: dict[str, Launcher] = {
        "bare fork/exec": bare,
        "isobench in-process": in_process,
        "isobench-runtime run": cli,
    }
    for ref in refs:
        ok, reason = ref.available(str(bundle))
        if ok:
            label = f"{ref.name} run" + (
                " (cgroup2 hidden)" if ref.describe()["private_mount_ns_without_cgroup2"] else ""
            )
            found[label] = lambda ref=ref: ref.run(str(bundle), _next_id(ref.name))
        else:
            SUMMARY.append(f"startup: {ref.name} skipped: {reason}")
    yield found
    for ref in refs:
        ref.close()


LAUNCHER_NAMES = [
    "bare fork/exec",
    "isobench in-process",
    "isobench-runtime run",
    "runc run",
    "crun run",
]


@pytest.mark.parametrize("name", LAUNCHER_NAMES)
def test_launch_to_exit(
    benchmark: pytest.FixtureRequest, launchers: dict[str, Launcher], name: str
) -> None:
    """pytest-benchmark's own figures, one launcher at a time."""
    matches = [key for key in launchers if key.split(" (")[0] == name]
    if not matches:
        pytest.skip(f"{name} does not run on this host (see the summary)")
    launcher = launchers[matches[0]]
    benchmark.group = "startup"
    benchmark.extra_info["launcher"] = matches[0]
    benchmark.pedantic(launcher, rounds=ROUNDS, iterations=1, warmup_rounds=3)


def _leftovers(workdir: Path) -> dict[str, int]:
    """What 500 launches must not leave: state dirs, cgroup dirs of ours, zombies."""
    state = sum(len(os.listdir(d)) for d in workdir.glob("state-*") if d.is_dir())
    cgroups = 0
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        parent = hierarchy / CGROUP_PARENT.lstrip("/")
        if parent.is_dir():
            cgroups += sum(
                1
                for c in parent.iterdir()
                if c.is_dir() and c.name.startswith(f"isobench-bench-{os.getpid()}")
            )
    zombies = 0
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            zombies += 1
    except ChildProcessError:
        pass
    return {"state_dirs": state, "cgroup_dirs": cgroups, "zombies": zombies}


def test_side_by_side(launchers: dict[str, Launcher], workdir: Path) -> None:
    """Randomised complete blocks; prints p50/p90/p99 and ratios with 95 % bootstrap intervals."""
    rng = random.Random(SEED)
    names = list(launchers)
    for name in names:  # warm-up round, discarded
        launchers[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    mounts_before = Path("/proc/self/mountinfo").read_text().count("\n")
    for _ in range(BLOCKS):
        order = names[:]
        rng.shuffle(order)
        for name in order:
            samples[name].append(launchers[name]() * 1000.0)
    leftovers = _leftovers(workdir)
    leftovers["host_mounts_added"] = (
        Path("/proc/self/mountinfo").read_text().count("\n") - mounts_before
    )

    SUMMARY.append(f"startup, launch-to-exit of /bin/true: {BLOCKS} randomised blocks, seed {SEED}")
    SUMMARY.append(f"{'launcher':38s} {'p50 ms':>8s} {'p90 ms':>8s} {'p99 ms':>8s}")
    for name in names:
        values = samples[name]
        SUMMARY.append(
            f"{name:38s} {percentile(values, 50):8.2f} {percentile(values, 90):8.2f} {percentile(values, 99):8.2f}"
        )
    report: dict[str, object] = {
        "seed": SEED,
        "blocks": BLOCKS,
        "samples_ms": samples,
        "leftovers": leftovers,
    }
    ratios: dict[str, str] = {}
    for ref in [n for n in names if n.startswith(("runc", "crun"))]:
        for ours in ("isobench in-process", "isobench-runtime run"):
            ratio = paired_median_ratio(samples[ours], samples[ref], seed=SEED)
            ratios[f"{ours} / {ref}"] = str(ratio)
            SUMMARY.append(f"ratio of p50s  {ours} / {ref}: {ratio}")
    report["ratios"] = ratios
    crun = next((n for n in names if n.startswith("crun")), None)
    runc = next((n for n in names if n.startswith("runc")), None)
    if crun:
        verdict = paired_median_ratio(samples["isobench in-process"], samples[crun], seed=SEED)
        SUMMARY.append(
            f"target in-process <= 1/3 of crun: {'met' if verdict.high <= 1 / 3 else 'NOT met'} ({verdict})"
        )
    if runc:
        verdict = paired_median_ratio(samples["isobench-runtime run"], samples[runc], seed=SEED)
        SUMMARY.append(
            f"target isobench-runtime run <= 1/2 of runc: {'met' if verdict.high <= 0.5 else 'NOT met'} ({verdict})"
        )
    SUMMARY.append(f"left behind after {BLOCKS * len(names)} launches: {leftovers}")
    out = os.environ.get("ISOBENCH_STARTUP_JSON")
    if out:
        Path(out).write_text(json.dumps(report, indent=1))
    assert leftovers == {"state_dirs": 0, "cgroup_dirs": 0, "zombies": 0, "host_mounts_added": 0}
    shutil.rmtree(workdir / "state-inprocess", ignore_errors=True)
