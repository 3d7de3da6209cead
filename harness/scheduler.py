"""Randomised complete blocks (MEASUREMENT.md): every (benchmark, platform) pair once per block.

The whole sequence is planned up front from the seed: a warm-up round (block
WARMUP_BLOCK, discarded by the statistics), then `blocks` blocks, each with the
benchmarks in a shuffled order and, per benchmark, the platforms in a shuffled
order. Machine drift then hits every platform alike. Names are sorted before
shuffling, so the plan depends on the seed and the sets of names only.

Resume is the same call on a result file that already holds samples: the plan
is rebuilt from the recorded seed and the steps already measured are skipped.
Since samples are taken in plan order, what remains runs in exactly the order an
uninterrupted run would have used, and nothing is measured twice.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import psutil  # type: ignore[import-untyped]

from harness.errors import IsobenchError, UserError
from harness.platforms.base import Outcome, Platform
from harness.platforms.burst import BURST_SIZE
from harness.results import WARMUP_BLOCK, ResultFile, Sample, benchmark_record, utc_now
from harness.workloads.base import Metric, Workload

STDERR_TAIL_CHARS = 2000  # how much of a failing tool's stderr a sample keeps


def _no_parser(stdout: str) -> dict[str, float]:
    raise NotImplementedError("startup samples are timed by launch_latency(), not parsed")


# One cold start per sample: a platform's launch_latency() (launch to exit of /bin/true).
STARTUP_WORKLOAD = Workload(
    benchmark="startup.launch",
    category="startup",
    argv=("/bin/true",),
    metrics=(Metric("launch_s", "s", higher_is_better=False),),
    primary="launch_s",
    parse=_no_parser,
)

# One sample per block: BURST_SIZE cold starts launched at once (Platform.launch_burst).
BURST_WORKLOAD = Workload(
    benchmark="startup.burst",
    category="startup",
    argv=("/bin/true",),
    metrics=(
        Metric("total_s", "s", higher_is_better=False),
        Metric("per_launch_p50_s", "s", higher_is_better=False),
        Metric("per_launch_max_s", "s", higher_is_better=False),
        Metric("per_launch_mean_s", "s", higher_is_better=False),
        Metric("launches_per_s", "launches/s", higher_is_better=True),
    ),
    primary="total_s",
    parse=_no_parser,
    sizes={"concurrent_launches": BURST_SIZE},
)
STARTUP_NAMES = (STARTUP_WORKLOAD.benchmark, BURST_WORKLOAD.benchmark)

Progress = Callable[[int, int, Sample], None]  # (steps done, steps in the plan, the new sample)
Confounders = Callable[[], dict[str, float]]


@dataclass(frozen=True)
class Step:
    """One planned sample: a benchmark on a platform in a block (launch: which cold start)."""

    block: int
    benchmark: str
    platform: str
    launch: int = 0


class HostConfounders:
    """What can confound a sample, over the interval since the previous call (psutil, loadavg).

    The scheduler calls it just before and just after each sample and records the
    second result: steal_pct and cpu_pct of all CPUs during the sample, load1 at its end.
    Keeps its own previous reading (not psutil's module-wide one, which others may reset).
    """

    def __init__(self) -> None:
        self._last = psutil.cpu_times()

    def __call__(self) -> dict[str, float]:
        now = psutil.cpu_times()
        last, self._last = self._last, now
        # Linux counts guest time inside user and nice too; psutil's own total leaves it out.
        fields = [f for f in now._fields if f not in ("guest", "guest_nice")]
        total = sum(getattr(now, f) - getattr(last, f) for f in fields)
        idle = sum(getattr(now, f) - getattr(last, f) for f in ("idle", "iowait") if f in fields)
        steal = now.steal - last.steal if "steal" in fields else 0.0
        pct = 100.0 / total if total > 0 else 0.0
        return {
            "steal_pct": round(steal * pct, 3),
            "load1": os.getloadavg()[0],
            "cpu_pct": round((total - idle) * pct, 3),
        }


def validate_request(
    blocks: int,
    *,
    startup_launches: int = 0,
    platforms: Sequence[str] | None = None,
    benchmarks: Sequence[str] | None = None,
) -> None:
    """Refuse a request no block design can serve, with one-line UserErrors (None: not checked)."""
    if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
        raise UserError(f"--blocks {blocks}: a run needs at least one complete block; accepted: an integer >= 1")  # fmt: skip
    if isinstance(startup_launches, bool) or not isinstance(startup_launches, int) or startup_launches < 0:  # fmt: skip
        raise UserError(f"startup launches {startup_launches}: accepted: an integer >= 0")
    if platforms is not None and not platforms:
        raise UserError("--platform: no platform to run on; accepted: at least one platform this host can run (see `isobench doctor`)")  # fmt: skip
    if benchmarks is not None and not benchmarks and startup_launches == 0:
        raise UserError("--bench: no benchmark to run; accepted: at least one benchmark")
    for flag, names in (("--platform", platforms or ()), ("--bench", benchmarks or ())):
        repeated = sorted({n for n in names if list(names).count(n) > 1})
        if repeated:
            raise UserError(f"{flag}: {', '.join(repeated)} given twice; accepted: each name once")
    reserved = sorted(set(STARTUP_NAMES) & set(benchmarks or ())) if startup_launches else []
    if reserved:
        raise UserError(f"--bench {reserved[0]}: reserved for startup launches; accepted: another name")  # fmt: skip


def launch_cap(platform: Platform) -> int | None:
    """A platform's cap on cold starts per block (its optional `cold_starts_per_block`), if any."""
    cap = getattr(platform, "cold_starts_per_block", None)
    return cap if isinstance(cap, int) and not isinstance(cap, bool) and cap >= 1 else None


def plan(
    platforms: Sequence[str],
    benchmarks: Sequence[str],
    *,
    blocks: int,
    seed: int,
    startup_launches: int = 0,
    launch_caps: Mapping[str, int] | None = None,
) -> list[Step]:
    """The whole run in order: the warm-up round, then the blocks; the same seed gives the same list.

    launch_caps: platforms whose cold start is too slow for startup_launches a block
    (a VM under TCG boots in seconds) take at most that many per block.
    """
    rng = random.Random(seed)
    caps = launch_caps or {}
    names = sorted(benchmarks) + (list(STARTUP_NAMES) if startup_launches else [])
    steps = []
    for block in [WARMUP_BLOCK, *range(blocks)]:
        order = list(names)
        rng.shuffle(order)
        for bench in order:
            # Startup: the block's cold starts go round by round, platforms reshuffled each round.
            rounds = 1 if bench != STARTUP_WORKLOAD.benchmark or block == WARMUP_BLOCK else startup_launches  # fmt: skip
            for launch in range(rounds):
                platform_order = sorted(
                    p for p in platforms if bench != STARTUP_WORKLOAD.benchmark or launch < caps.get(p, rounds)
                )  # fmt: skip
                rng.shuffle(platform_order)
                steps += [Step(block, bench, p, launch) for p in platform_order]
    return steps


def run_blocks(
    platforms: Sequence[Platform],
    workloads: Sequence[Workload],
    *,
    blocks: int,
    seed: int,
    results: ResultFile,
    startup_launches: int = 0,
    progress: Progress | None = None,
    confounders: Confounders | None = None,
) -> None:
    """Run (or resume) the planned blocks, appending every sample to results as it is taken.

    Platforms must be prepared. Ends with results.finish("complete"); any exception
    (Ctrl-C included) marks the file "interrupted" and propagates.
    """
    by_platform = {p.name: p for p in platforms}
    by_bench = {w.benchmark: w for w in workloads}
    validate_request(
        blocks,
        startup_launches=startup_launches,
        platforms=[p.name for p in platforms],
        benchmarks=[w.benchmark for w in workloads],
    )
    if seed != results.seed:
        raise UserError(f"--seed {seed}: {results.path} was planned with seed {results.seed}; accepted: --seed {results.seed} (or no --seed)")  # fmt: skip
    if startup_launches:
        by_bench[STARTUP_WORKLOAD.benchmark] = STARTUP_WORKLOAD
        by_bench[BURST_WORKLOAD.benchmark] = BURST_WORKLOAD
    if results.samples:
        _check_resume(results, set(by_platform), list(by_bench.values()))
    if results.status != "running":
        results.reopen()
    for workload in by_bench.values():
        results.declare_benchmark(workload)
    for name, platform in by_platform.items():
        if name not in results.info["platforms"]:
            results.declare_platform(name, platform.describe())
    results.set_blocks(blocks)

    names = [w.benchmark for w in workloads]
    caps = {name: cap for name, p in by_platform.items() if (cap := launch_cap(p)) is not None}
    steps = plan(list(by_platform), names, blocks=blocks, seed=seed, startup_launches=startup_launches, launch_caps=caps)  # fmt: skip
    counts = results.key_counts()
    warmed_up = any(s.warmup for s in results.samples)
    todo = [
        step
        for step in steps
        if not (step.block == WARMUP_BLOCK and warmed_up)  # a partial warm-up is not redone
        and counts[(step.block, step.platform, step.benchmark)] <= step.launch
    ]
    measure = confounders if confounders is not None else HostConfounders()
    try:
        for done, step in enumerate(todo, start=len(steps) - len(todo) + 1):
            sample = _take(step, by_platform[step.platform], by_bench[step.benchmark], results, measure)  # fmt: skip
            results.append(sample)
            if progress is not None:
                progress(done, len(steps), sample)
    except BaseException:
        results.finish("interrupted")
        raise
    results.finish("complete")


def _check_resume(results: ResultFile, platforms: set[str], workloads: list[Workload]) -> None:
    """A resume must ask for what the file was planned with, or the plan (and order) would differ."""
    info = results.info
    recorded_p, recorded_b = set(info["platforms"]), set(info["benchmarks"])
    if recorded_p != platforms or recorded_b != {w.benchmark for w in workloads}:
        raise UserError(
            f"{results.path}: planned with platforms {', '.join(sorted(recorded_p))} and benchmarks "
            f"{', '.join(sorted(recorded_b))}; accepted: a resume with exactly those"
        )
    for workload in workloads:
        # A JSON round trip, as the file holds it (tuples become lists).
        asked = json.loads(json.dumps(benchmark_record(workload)))
        if asked != info["benchmarks"][workload.benchmark]:
            raise UserError(
                f"{results.path}: {workload.benchmark} was measured with sizes "
                f"{info['benchmarks'][workload.benchmark]['sizes']}, not {asked['sizes']}; "
                f"accepted: a resume with the run's own profile ({results.info['profile']})"
            )


def _take(
    step: Step,
    platform: Platform,
    workload: Workload,
    results: ResultFile,
    confounders: Confounders,
) -> Sample:
    """Measure one step; a failing tool or a platform error becomes a sample with error set."""
    started = utc_now()
    confounders()  # start of the interval the second call reports on
    error: str | None = None
    metrics: dict[str, float] = {}
    if workload is STARTUP_WORKLOAD or workload is BURST_WORKLOAD:
        outcome = Outcome(exit_code=0, stdout="", stderr="", wall_s=0.0)
        t0 = time.perf_counter()
        try:
            if workload is STARTUP_WORKLOAD:
                metrics = {"launch_s": platform.launch_latency()}
            else:
                metrics = platform.launch_burst(BURST_SIZE).metrics()
        except IsobenchError as exc:
            error = f"{type(exc).__name__}: {exc}"
            outcome.exit_code = -1
        outcome.wall_s = time.perf_counter() - t0
    else:
        try:
            outcome = platform.run(workload)
        except IsobenchError as exc:
            outcome = Outcome(exit_code=-1, stdout="", stderr=str(exc), wall_s=0.0)
            error = f"{type(exc).__name__}: {exc}"
        else:
            metrics, error = _parse(outcome.ran or workload, outcome)
    figures = confounders()
    return Sample(
        block=step.block,
        seq=len(results.samples),
        platform=step.platform,
        benchmark=step.benchmark,
        warmup=step.block == WARMUP_BLOCK,
        metrics=metrics,
        wall_s=outcome.wall_s,
        exit_code=outcome.exit_code,
        error=error,
        confounders=figures,
        resources=dict(outcome.resources),
        time=started,
    )


def _parse(workload: Workload, outcome: Outcome) -> tuple[dict[str, float], str | None]:
    """The metrics of a finished run, or why there are none."""
    tail = outcome.stderr[-STDERR_TAIL_CHARS:]
    if outcome.exit_code != 0:
        return {}, f"exit code {outcome.exit_code}; stderr: {tail}"
    try:
        metrics = workload.parse(outcome.stdout)
    except Exception as exc:
        # ParseError is the expected case. Anything else is a parser meeting output it
        # did not foresee: recorded the same way, so one odd sample does not end the run.
        return {}, f"{type(exc).__name__}: {exc}; stderr: {tail}"
    bad = sorted(name for name, value in metrics.items() if not _finite(value))
    if workload.primary not in metrics or bad:
        problem = f"non-finite {', '.join(bad)}" if bad else f"no {workload.primary}"
        return {}, f"parser gave {problem}; stderr: {tail}"
    return {name: float(value) for name, value in metrics.items()}, None


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
