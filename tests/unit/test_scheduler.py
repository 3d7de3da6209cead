"""Randomised complete blocks with fake platforms: order, warm-up, errors, startup, resume, SIGKILL."""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.errors import ContainerError, NotApplicable, UserError
from harness.platforms.base import Outcome, RunContext
from harness.platforms.burst import BURST_SIZE, Burst
from harness.results import WARMUP_BLOCK, ResultFile, RunHeader
from harness.scheduler import (
    STARTUP_WORKLOAD,
    HostConfounders,
    plan,
    run_blocks,
    validate_request,
)
from harness.workloads.base import Metric, Workload

ROOT = Path(__file__).resolve().parents[2]
SEED = 1234
SYSBENCH_OUTPUT = """\
sysbench 1.0.20 (using system LuaJIT 2.1.0-beta3)

CPU speed:
    events per second: {rate:.2f}

General statistics:
    total time:                          1.0002s
    total number of events:              {events}

Latency (ms):
         min:                                    0.79
         avg:                                    {latency:.2f}
"""


class FakeParseError(Exception):
    """Stands in for harness.workloads.parsers.ParseError."""


class Killed(BaseException):
    """Raised by a fake platform to stop a run the way a kill would: mid-run, no clean-up."""


def parse_sysbench(stdout: str) -> dict[str, float]:
    """The fake workload's trivial parser."""
    rate = re.search(r"events per second:\s+([\d.]+)", stdout)
    latency = re.search(r"avg:\s+([\d.]+)", stdout)
    if rate is None or latency is None:
        raise FakeParseError("no 'events per second' in sysbench output")
    return {"events_per_s": float(rate.group(1)), "latency_avg_ms": float(latency.group(1))}


def workload(benchmark: str, primary: str = "events_per_s") -> Workload:
    return Workload(
        benchmark=benchmark,
        category="cpu",
        argv=("sysbench", "cpu", "run"),
        metrics=(Metric("events_per_s", "events/s", True), Metric("latency_avg_ms", "ms", False)),
        primary=primary,
        parse=parse_sysbench,
        sizes={"events": 1000},
    )


def fake_workloads() -> list[Workload]:
    return [workload("cpu.a"), workload("cpu.b"), workload("cpu.c", primary="latency_avg_ms")]


class FakePlatform:
    """A platform whose runs return canned sysbench output; can fail, sleep or be 'killed'."""

    def __init__(
        self,
        name: str,
        *,
        speed: float = 1.0,
        sleep_s: float = 0.0,
        exit_code: int = 0,
        garbage: bool = False,
        raise_error: bool = False,
        kill_after: int | None = None,
    ) -> None:
        self.name = name
        self.speed = speed
        self.sleep_s = sleep_s
        self.exit_code = exit_code
        self.garbage = garbage
        self.raise_error = raise_error
        self.kill_after = kill_after  # raise Killed on this many-th call (run or launch)
        self.calls: list[str] = []

    def _count(self, what: str) -> None:
        if self.kill_after is not None and len(self.calls) >= self.kill_after:
            raise Killed(f"{self.name} killed after {len(self.calls)} calls")
        self.calls.append(what)
        if self.sleep_s:
            time.sleep(self.sleep_s)

    def available(self) -> tuple[bool, str]:
        return True, ""

    def prepare(self, ctx: RunContext) -> None:
        pass

    def run(self, workload: Workload) -> Outcome:
        self._count(workload.benchmark)
        if self.raise_error:
            raise ContainerError("container could not start: no such file /bin/sysbench")
        n = len(self.calls)
        rate = 1000.0 * self.speed + n
        stdout = "garbage" if self.garbage else SYSBENCH_OUTPUT.format(rate=rate, events=int(rate), latency=1000.0 / rate)  # fmt: skip
        stderr = "x" * 5000 + "FATAL: the end of stderr" if self.exit_code else ""
        return Outcome(self.exit_code, stdout, stderr, wall_s=0.01, resources={"cpu_s": 0.01})

    def launch_latency(self) -> float:
        self._count("launch")
        return 0.001 * self.speed

    def launch_burst(self, count: int) -> Burst:
        self._count("burst")
        if self.raise_error:
            raise NotApplicable(f"{self.name}: no bursts here")
        return Burst(0.01 * self.speed, tuple(0.005 * self.speed for _ in range(count)))

    def teardown(self) -> None:
        pass

    def describe(self) -> dict[str, object]:
        return {"kind": "fake", "speed": self.speed}


def no_confounders() -> dict[str, float]:
    return {"steal_pct": 0.0, "load1": 0.0, "cpu_pct": 0.0}


def new_results(path: Path, seed: int = SEED, blocks: int = 4) -> ResultFile:
    header = RunHeader(
        run_id="run-test",
        profile="smoke",
        seed=seed,
        blocks=blocks,
        machine_info={"node": "test"},
        commit_info={"id": "abc"},
    )
    return ResultFile.create(path, header)


def keys(results: ResultFile) -> list[tuple[int, str, str]]:
    return [s.key for s in results.samples]


def run(path: Path, platforms: list[FakePlatform], blocks: int = 4, **kw: object) -> ResultFile:
    results = ResultFile.load(path) if path.exists() else new_results(path, blocks=blocks)
    run_blocks(
        platforms,
        fake_workloads(),
        blocks=blocks,
        seed=SEED,
        results=results,
        confounders=no_confounders,
        **kw,  # type: ignore[arg-type]
    )
    return results


def fakes(**kw: object) -> list[FakePlatform]:
    return [FakePlatform(n, **kw) for n in ("bare", "container", "oci:runc")]  # type: ignore[arg-type]


# --- the plan


def test_every_block_runs_every_pair_exactly_once_in_varying_orders() -> None:
    steps = plan(
        ["bare", "container", "oci:runc"], ["cpu.a", "cpu.b", "cpu.c"], blocks=6, seed=SEED
    )
    by_block: dict[int, list[tuple[str, str]]] = collections.defaultdict(list)
    for step in steps:
        by_block[step.block].append((step.benchmark, step.platform))
    assert sorted(by_block) == [WARMUP_BLOCK, 0, 1, 2, 3, 4, 5]
    every_pair = sorted((b, p) for b in ("cpu.a", "cpu.b", "cpu.c") for p in ("bare", "container", "oci:runc"))  # fmt: skip
    for pairs in by_block.values():
        assert sorted(pairs) == every_pair
    orders = {tuple(pairs) for block, pairs in by_block.items() if block != WARMUP_BLOCK}
    assert len(orders) == 6  # no two blocks in the same order
    # within blocks, each benchmark's platform order varies too
    platform_orders = {tuple(p for b, p in pairs if b == "cpu.a") for pairs in by_block.values()}
    assert len(platform_orders) > 1


def test_same_seed_same_plan_whatever_the_input_order() -> None:
    one = plan(["bare", "container"], ["cpu.a", "cpu.b"], blocks=5, seed=7)
    two = plan(["container", "bare"], ["cpu.b", "cpu.a"], blocks=5, seed=7)
    other = plan(["bare", "container"], ["cpu.a", "cpu.b"], blocks=5, seed=8)
    assert one == two
    assert one != other
    # more blocks extend the plan without changing its start
    assert plan(["bare", "container"], ["cpu.a", "cpu.b"], blocks=8, seed=7)[: len(one)] == one


def test_startup_launches_go_round_by_round() -> None:
    steps = plan(["bare", "container"], ["cpu.a"], blocks=2, seed=1, startup_launches=3)
    startup = [s for s in steps if s.benchmark == STARTUP_WORKLOAD.benchmark]
    assert len([s for s in startup if s.block == WARMUP_BLOCK]) == 2
    for block in (0, 1):
        launches = [(s.launch, s.platform) for s in startup if s.block == block]
        assert sorted(launches) == [(i, p) for i in range(3) for p in ("bare", "container")]
        assert [i for i, _ in launches] == [0, 0, 1, 1, 2, 2]


# --- running


def test_a_run_records_the_plan_in_order_with_warmup_excluded_from_stats(tmp_path: Path) -> None:
    platforms = fakes()
    results = run(tmp_path / "r.json", platforms)
    expected = plan([p.name for p in platforms], [w.benchmark for w in fake_workloads()], blocks=4, seed=SEED)  # fmt: skip
    assert keys(results) == [(s.block, s.platform, s.benchmark) for s in expected]
    assert [s.seq for s in results.samples] == list(range(len(expected)))
    assert [s.warmup for s in results.samples] == [s.block == WARMUP_BLOCK for s in expected]
    assert results.status == "complete"
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["isobench"]["status"] == "complete"
    assert doc["isobench"]["platforms"]["bare"] == {"kind": "fake", "speed": 1.0}
    assert len(doc["benchmarks"]) == 9
    assert {b["stats"]["rounds"] for b in doc["benchmarks"]} == {
        4
    }  # the warm-up sample is not counted


def test_failures_are_recorded_not_raised(tmp_path: Path) -> None:
    platforms = [
        FakePlatform("bare"),
        FakePlatform("fails", exit_code=2),
        FakePlatform("garbage", garbage=True),
        FakePlatform("broken", raise_error=True),
    ]
    results = run(tmp_path / "r.json", platforms, blocks=2)
    assert results.status == "complete"
    by_platform = collections.defaultdict(list)
    for sample in results.samples:
        by_platform[sample.platform].append(sample)
    assert all(s.error is None for s in by_platform["bare"])
    failed = by_platform["fails"][0]
    assert failed.exit_code == 2
    assert failed.error is not None and failed.error.startswith("exit code 2")
    assert failed.error.endswith("FATAL: the end of stderr") and len(failed.error) < 2100
    assert "FakeParseError: no 'events per second'" in (by_platform["garbage"][0].error or "")
    assert "ContainerError: container could not start" in (by_platform["broken"][0].error or "")
    assert all(s.metrics == {} for p in ("fails", "garbage", "broken") for s in by_platform[p])
    # failed samples are not statistics; 3 benchmarks x bare only
    doc = results.document()
    assert {b["params"]["platform"] for b in doc["benchmarks"]} == {"bare"}


def test_startup_launches_are_samples_of_startup_launch(tmp_path: Path) -> None:
    results = run(tmp_path / "r.json", fakes(), blocks=2, startup_launches=5)
    launches = [s for s in results.samples if s.benchmark == "startup.launch" and not s.warmup]
    assert len(launches) == 2 * 3 * 5
    assert all(s.metrics == {"launch_s": 0.001} for s in launches)
    entry = next(b for b in results.document()["benchmarks"] if b["name"] == "startup.launch[bare]")
    assert entry["group"] == "startup"
    assert entry["stats"]["rounds"] == 10
    assert entry["extra_info"]["higher_is_better"] is False


def test_a_platform_with_slow_cold_starts_takes_only_its_cap(tmp_path: Path) -> None:
    platforms = fakes()
    platforms[2].cold_starts_per_block = 2  # type: ignore[attr-defined]
    results = run(tmp_path / "r.json", platforms, blocks=2, startup_launches=5)
    launches = Counter(
        s.platform for s in results.samples if s.benchmark == "startup.launch" and not s.warmup
    )
    assert launches == {platforms[0].name: 10, platforms[1].name: 10, platforms[2].name: 4}
    assert results.status == "complete"
    # A resume plans the same: nothing is taken twice.
    again = run(
        tmp_path / "r.json", fakes_with_cap(platforms[2].name, 2), blocks=2, startup_launches=5
    )
    assert len(again.samples) == len(results.samples)


def fakes_with_cap(name: str, cap: int) -> list[FakePlatform]:
    platforms = fakes()
    for p in platforms:
        if p.name == name:
            p.cold_starts_per_block = cap  # type: ignore[attr-defined]
    return platforms


def test_a_burst_is_one_sample_per_block_and_platform(tmp_path: Path) -> None:
    results = run(tmp_path / "r.json", fakes(), blocks=2, startup_launches=5)
    bursts = [s for s in results.samples if s.benchmark == "startup.burst" and not s.warmup]
    assert sorted((s.block, s.platform) for s in bursts) == sorted(
        (block, p.name) for block in range(2) for p in fakes()
    )
    bare = next(s for s in bursts if s.platform == "bare")
    assert bare.metrics["total_s"] == 0.01
    assert bare.metrics["per_launch_p50_s"] == 0.005
    assert bare.metrics["launches_per_s"] == pytest.approx(BURST_SIZE / 0.01)


def test_a_platform_without_bursts_records_why(tmp_path: Path) -> None:
    platforms = [FakePlatform("bare"), FakePlatform("vm", raise_error=True)]
    results = run(tmp_path / "r.json", platforms, blocks=1, startup_launches=1)
    [vm_burst] = [
        s
        for s in results.samples
        if s.benchmark == "startup.burst" and s.platform == "vm" and not s.warmup
    ]
    assert vm_burst.metrics == {} and vm_burst.error is not None
    assert "NotApplicable: vm: no bursts here" in vm_burst.error


def test_progress_reports_every_step(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    run(tmp_path / "r.json", fakes(), blocks=2, progress=lambda d, t, s: seen.append((d, t)))
    assert seen == [(i, 27) for i in range(1, 28)]


def test_ctrl_c_marks_the_file_interrupted_and_propagates(tmp_path: Path) -> None:
    class CtrlC(FakePlatform):
        def run(self, workload: Workload) -> Outcome:
            if len(self.calls) == 2:
                raise KeyboardInterrupt
            return super().run(workload)

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "r.json", [FakePlatform("bare"), CtrlC("container")])
    loaded = ResultFile.load(tmp_path / "r.json")
    assert loaded.status == "interrupted"
    assert loaded.info["finished"] is not None
    assert len(loaded.samples) >= 2


# --- resume


def uninterrupted(tmp_path: Path, **kw: object) -> list[tuple[int, str, str]]:
    return keys(run(tmp_path / "whole.json", fakes(), **kw))  # type: ignore[arg-type]


# kill_after counts calls on 'container': 5 in the warm-up, then 6 per block (3 runs,
# 2 launches, 1 burst).
@pytest.mark.parametrize(
    ("kill_after", "killed_in"), [(0, None), (2, -1), (6, 0), (13, 1), (24, 3)]
)
def test_resume_after_a_kill_gives_the_uninterrupted_sequence(
    tmp_path: Path, kill_after: int, killed_in: int | None
) -> None:
    whole = uninterrupted(tmp_path, startup_launches=2)
    path = tmp_path / "part.json"
    platforms = fakes()
    platforms[1].kill_after = kill_after
    with pytest.raises(Killed):
        run(path, platforms, startup_launches=2)
    partial = ResultFile.load(path)
    taken = len(partial.samples)
    assert partial.status == "interrupted"
    assert taken < len(whole)
    if killed_in is not None:
        assert partial.samples[-1].block == killed_in
    resumed = run(path, fakes(), startup_launches=2)
    assert resumed.status == "complete"
    warmup_taken = sum(1 for k in keys(resumed)[:taken] if k[0] == WARMUP_BLOCK)
    if 0 < warmup_taken < sum(1 for k in whole if k[0] == WARMUP_BLOCK):
        # killed during the warm-up: the rest of it is not redone
        whole = [k for k in whole if k[0] != WARMUP_BLOCK or k in keys(resumed)[:taken]]
    assert keys(resumed) == whole
    assert [s.seq for s in resumed.samples] == list(range(len(whole)))


def test_resume_of_a_complete_file_takes_nothing(tmp_path: Path) -> None:
    first = run(tmp_path / "r.json", fakes(), blocks=2)
    platforms = fakes()
    again = run(tmp_path / "r.json", platforms, blocks=2)
    assert keys(again) == keys(first)
    assert all(p.calls == [] for p in platforms)
    more = run(tmp_path / "r.json", fakes(), blocks=3)  # extending a run adds blocks at the end
    assert keys(more)[: len(keys(first))] == keys(first)
    assert {k[0] for k in keys(more)[len(keys(first)) :]} == {2}
    assert more.blocks == 3


def test_resume_refuses_another_seed_or_other_platforms(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    run(path, fakes(), blocks=1)
    with pytest.raises(UserError, match=r"--seed 99: .* accepted: --seed 1234"):
        run_blocks(fakes(), fake_workloads(), blocks=1, seed=99, results=ResultFile.load(path))
    with pytest.raises(UserError, match="accepted: a resume with exactly those"):
        run_blocks(
            fakes()[:2], fake_workloads(), blocks=1, seed=SEED, results=ResultFile.load(path)
        )
    bigger = [Workload(**{**w.__dict__, "sizes": {"events": 5000}}) for w in fake_workloads()]
    with pytest.raises(
        UserError,
        match=r"cpu\.a was measured with sizes \{'events': 1000\}, not \{'events': 5000\}",
    ):
        run_blocks(fakes(), bigger, blocks=1, seed=SEED, results=ResultFile.load(path))


def test_validate_request_names_the_bad_input() -> None:
    with pytest.raises(UserError) as info:
        validate_request(0)
    assert (
        str(info.value)
        == "--blocks 0: a run needs at least one complete block; accepted: an integer >= 1"
    )
    with pytest.raises(UserError, match="--blocks -3"):
        validate_request(-3)
    with pytest.raises(UserError, match="--platform: bare given twice"):
        validate_request(2, platforms=["bare", "bare"], benchmarks=["cpu.a"])
    with pytest.raises(UserError, match="--platform: no platform"):
        validate_request(2, platforms=[], benchmarks=["cpu.a"])
    with pytest.raises(UserError, match="--bench: no benchmark"):
        validate_request(2, platforms=["bare"], benchmarks=[])
    validate_request(1, platforms=["bare"], benchmarks=[], startup_launches=3)


def test_host_confounders_are_percentages_of_the_interval() -> None:
    measure = HostConfounders()
    deadline = time.perf_counter() + 0.2
    while time.perf_counter() < deadline:
        pass  # keep a CPU busy so the interval has CPU time in it
    figures = measure()
    assert set(figures) == {"steal_pct", "load1", "cpu_pct"}
    assert 0.0 <= figures["steal_pct"] <= 100.0
    assert 0.0 < figures["cpu_pct"] <= 100.0
    assert figures["load1"] == pytest.approx(os.getloadavg()[0], abs=1.0)


# --- a real SIGKILL of a real process

CHILD = """
import sys
from pathlib import Path
from harness.results import ResultFile
from harness.scheduler import run_blocks
from tests.unit.test_scheduler import FakePlatform, fake_workloads, no_confounders
results = ResultFile.load(Path(sys.argv[1]))
platforms = [FakePlatform(n, sleep_s=0.03) for n in ("bare", "container", "oci:runc")]
run_blocks(platforms, fake_workloads(), blocks=4, seed=int(sys.argv[2]), results=results,
           confounders=no_confounders)
"""


def poll_samples(path: Path, child: subprocess.Popen[bytes], at_least: int) -> Iterator[int]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and child.poll() is None:
        # Every read sees a whole file: the writer replaces it atomically.
        count = len(json.loads(path.read_text())["isobench"]["samples"])
        yield count
        if count >= at_least:
            return
        time.sleep(0.005)
    raise AssertionError(f"the child wrote fewer than {at_least} samples (exit {child.poll()})")


def test_sigkill_mid_run_then_resume_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "killed.json"
    new_results(path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(CHILD), str(path), str(SEED)], cwd=ROOT, env=env)  # fmt: skip
    try:
        reads = list(poll_samples(path, child, at_least=15))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    killed = ResultFile.load(path)  # valid JSON, a valid result file
    taken = len(killed.samples)
    whole = uninterrupted(tmp_path)
    assert reads[-1] <= taken < len(whole)
    assert killed.status == "running"  # nothing had a chance to mark it
    assert keys(killed) == whole[:taken]
    resumed = run(path, fakes())
    assert keys(resumed) == whole
    assert len(set(keys(resumed))) == len(whole)
    assert resumed.status == "complete"


def test_the_output_of_a_changed_workload_is_read_by_its_own_parser(tmp_path: Path) -> None:
    """A platform that ran another size (a VM under TCG) hands that workload back with the outcome."""

    class Shrinking(FakePlatform):
        def run(self, workload: Workload) -> Outcome:
            outcome = super().run(workload)
            seen: list[str] = []

            def strict(text: str) -> dict[str, float]:
                seen.append(text)
                return {"events_per_s": 1.0, "latency_avg_ms": 1.0}

            outcome.ran = dataclasses.replace(workload, parse=strict, sizes={"events": 1})
            return outcome

    results = run(tmp_path / "r.json", [FakePlatform("bare"), Shrinking("vm")], blocks=1)
    vm = [s for s in results.samples if s.platform == "vm" and not s.warmup]
    assert vm and all(s.metrics == {"events_per_s": 1.0, "latency_avg_ms": 1.0} for s in vm)
