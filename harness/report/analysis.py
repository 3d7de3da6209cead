"""Analysis of one run: medians, ratios to bare and warnings for every (benchmark, platform, metric)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from harness.report.load import NOT_APPLICABLE, BenchmarkInfo, MetricInfo, RunResult, Sample
from harness.stats import (
    Estimate,
    OverheadRatio,
    Ratio,
    block_median_ratio,
    coefficient_of_variation,
    median_ci,
    overhead_ratio,
)
from harness.workloads.base import CATEGORIES

BASELINE = "bare"
PLATFORM_ORDER = ("bare", "container", "oci:runc", "oci:crun", "vm")
CV_LIMIT = 0.05
STEAL_LIMIT_PCT = 2.0
TCG_WARNING = "TCG: emulated, not a KVM figure, excluded from overhead ratios unless --include-tcg"


@dataclass(frozen=True)
class Row:
    """One (benchmark, platform, metric) of a run: what tables, plots and the CSV are drawn from."""

    benchmark: BenchmarkInfo
    metric: MetricInfo
    platform: str
    values_by_block: dict[int, list[float]]
    estimate: Estimate
    cv: float
    ratio: OverheadRatio | Ratio | None
    note: str  # why there is no ratio, or what qualifies it
    tcg: bool = False  # measured on an emulated (TCG) VM

    @property
    def values(self) -> list[float]:
        """Every value, all blocks pooled."""
        return [v for vs in self.values_by_block.values() for v in vs]

    @property
    def is_primary(self) -> bool:
        """The metric is the benchmark's primary one (the one the tables show)."""
        return self.metric.name == self.benchmark.primary


@dataclass(frozen=True)
class RunAnalysis:
    """Everything the report says about one run."""

    run: RunResult
    platforms: tuple[str, ...]
    rows: tuple[Row, ...]
    warnings: tuple[str, ...]
    failed: tuple[Sample, ...]
    not_applicable: tuple[tuple[str, str, str], ...]  # (platform, benchmark, why), once each
    tcg: frozenset[str]
    blocks_done: int

    def primary_rows(self, category: str) -> list[Row]:
        """The rows of the category's benchmarks' primary metrics."""
        return [r for r in self.rows if r.benchmark.category == category and r.is_primary]

    def row(self, benchmark: str, platform: str, metric: str | None = None) -> Row | None:
        """The row of benchmark on platform for metric (default: the benchmark's primary)."""
        for r in self.rows:
            wanted = metric or r.benchmark.primary
            if (r.benchmark.name, r.platform, r.metric.name) == (benchmark, platform, wanted):
                return r
        return None


def _ordered(platforms: Iterable[str]) -> tuple[str, ...]:
    """The known platforms in PLATFORM_ORDER (bare first), then any others by name."""
    names = set(platforms)
    known = [p for p in PLATFORM_ORDER if p in names]
    return (*known, *sorted(names - set(known)))


def _ratio(
    bench: BenchmarkInfo,
    metric: MetricInfo,
    platform: str,
    values: dict[int, list[float]],
    bare: dict[int, list[float]] | None,
    excluded: bool,
) -> tuple[OverheadRatio | Ratio | None, str]:
    """The platform's ratio to bare and a note (why there is none, or what qualifies it)."""
    if platform == BASELINE:
        return None, "baseline"
    if not bare:
        return None, "no bare samples"
    if excluded:
        return None, "TCG: excluded"
    try:
        if bench.category == "startup":
            top, bottom = (bare, values) if metric.higher_is_better else (values, bare)
            return block_median_ratio(top, bottom), "ratio of p50s"
        result = overhead_ratio(values, bare, metric.higher_is_better)
    except ValueError as err:
        return None, str(err)
    return result, result.note


def analyse(run: RunResult, include_tcg: bool = False) -> RunAnalysis:
    """Medians, ratios to bare and warnings for every (benchmark, platform, metric) of a run.

    Warm-up and failed samples are left out; TCG platforms get no ratio unless include_tcg.
    """
    tcg = frozenset(p for p, d in run.platforms.items() if d.get("accel") == "tcg")
    # `isobench run --include-tcg` records the choice with the vm platform.
    include_tcg = include_tcg or any(d.get("include_tcg") is True for d in run.platforms.values())
    measured = [s for s in run.samples if not s.warmup]
    good = [s for s in measured if not s.failed and not s.not_applicable]
    rows = []
    by_rank = sorted(run.benchmarks.values(), key=lambda b: (_category_rank(b.category), b.name))
    for bench in by_rank:
        for metric in sorted(bench.metrics, key=lambda m: m.name != bench.primary):
            found: dict[str, dict[int, list[float]]] = {}
            for s in good:
                value = s.metrics.get(metric.name)
                if s.benchmark == bench.name and value is not None and math.isfinite(value):
                    found.setdefault(s.platform, {}).setdefault(s.block, []).append(value)
            for platform in _ordered(found):
                excluded = platform in tcg and not include_tcg
                ratio, note = _ratio(
                    bench, metric, platform, found[platform], found.get(BASELINE), excluded
                )
                flat = [v for vs in found[platform].values() for v in vs]
                rows.append(
                    Row(
                        benchmark=bench,
                        metric=metric,
                        platform=platform,
                        values_by_block=found[platform],
                        estimate=median_ci(flat),
                        cv=coefficient_of_variation(flat),
                        ratio=ratio,
                        note=note,
                        tcg=platform in tcg,
                    )
                )
    return RunAnalysis(
        run=run,
        platforms=_ordered(s.platform for s in good),
        rows=tuple(rows),
        warnings=_warnings(run, rows, measured, tcg, include_tcg),
        failed=tuple(s for s in measured if s.failed),
        not_applicable=_not_applicable(measured),
        tcg=tcg,
        blocks_done=len({s.block for s in good}),
    )


def _category_rank(category: str) -> int:
    return CATEGORIES.index(category) if category in CATEGORIES else len(CATEGORIES)


def _warnings(
    run: RunResult, rows: list[Row], measured: list[Sample], tcg: frozenset[str], include_tcg: bool
) -> tuple[str, ...]:
    """Why the run's figures may not be trusted, most general first.

    Startup is left out of the CV check: the spread of cold starts is what its
    percentiles report, not noise in a measurement.
    """
    out = []
    governor = run.host.get("governor")
    if governor != "performance":
        out.append(f"CPU governor is {governor!r}, not 'performance': frequency scaling adds noise")
    for platform in sorted(tcg):
        if include_tcg:
            out.append(
                f"{platform}: TCG: emulated, not a KVM figure; "
                "its ratios are shown (marked TCG) because of --include-tcg"
            )
        else:
            out.append(f"{platform}: {TCG_WARNING}")
    for platform, described in sorted(run.platforms.items()):
        changed = described.get("workload_changes")
        if isinstance(changed, dict) and changed:
            # The vm platform runs smaller or buffered variants under TCG: never compare them.
            listed = "; ".join(f"{bench}: {how}" for bench, how in sorted(changed.items()))
            out.append(f"{platform}: ran changed workloads, not comparable to bare ({listed})")
    for platform in _ordered(s.platform for s in measured):
        steal = [s.steal_pct for s in measured if s.platform == platform]
        known = [x for x in steal if x is not None]
        mean_steal = sum(known) / len(known) if known else 0.0
        if mean_steal > STEAL_LIMIT_PCT:
            out.append(
                f"{platform}: mean CPU steal {mean_steal:.1f} % (over {STEAL_LIMIT_PCT:g} %): "
                "another tenant took CPU time during the run"
            )
    short: list[str] = []  # ratios whose bootstrap and t intervals disagree: one line for all
    primary_ratios = 0
    for row in rows:
        name = row.benchmark.name
        if row.is_primary and row.benchmark.category != "startup" and row.cv > CV_LIMIT:
            out.append(
                f"{name} on {row.platform}: coefficient of variation of {row.metric.name} "
                f"is {row.cv:.1%} (over {CV_LIMIT:.0%})"
            )
        if row.is_primary and isinstance(row.ratio, OverheadRatio):
            primary_ratios += 1
            if row.ratio.disagree:
                short.append(f"{name} {row.platform}/bare")
    if short:
        # With a few blocks this is most rows; one line keeps the other warnings visible.
        out.append(
            f"too few blocks ({run.blocks}) for {len(short)} of {primary_ratios} ratios: their bootstrap "
            f"and t intervals disagree (marked ?); run more blocks (--blocks, or --profile full)"
        )
    failed = [s for s in measured if s.failed]
    if failed:
        noun = "sample" if len(failed) == 1 else "samples"
        out.append(f"{len(failed)} failed {noun} (listed below), left out of every figure")
    return tuple(out)


def _not_applicable(samples: list[Sample]) -> tuple[tuple[str, str, str], ...]:
    """Each (platform, benchmark) a platform could not measure, with its reason, once."""
    seen: dict[tuple[str, str], str] = {}
    for s in samples:
        if s.not_applicable and s.error is not None:
            seen.setdefault((s.platform, s.benchmark), s.error.removeprefix(NOT_APPLICABLE))
    return tuple((platform, bench, why) for (platform, bench), why in sorted(seen.items()))
