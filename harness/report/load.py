"""Loading result files: read, validate against schema_version 1 or 2, merge the files of one resumed run."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from harness.errors import UserError

SCHEMA_VERSIONS = (1, 2)  # 2 adds isobench.enforcement (harness.results)
STATUSES = ("running", "complete", "interrupted")
HOST_FACTS = (
    "cpu_model",
    "cores",
    "memory_bytes",
    "kernel",
    "cgroup_version",
    "governor",
    "turbo",
    "smt",
)
T = TypeVar("T")


@dataclass(frozen=True)
class MetricInfo:
    """One metric a benchmark declares."""

    name: str
    unit: str
    higher_is_better: bool


@dataclass(frozen=True)
class BenchmarkInfo:
    """A benchmark as recorded in the results: category, primary metric, all metrics."""

    name: str
    category: str
    primary: str
    metrics: tuple[MetricInfo, ...]


NOT_APPLICABLE = "NotApplicable: "  # how the scheduler records errors.NotApplicable


@dataclass(frozen=True)
class Sample:
    """One raw sample; failed when the tool reported an error or a non-zero exit."""

    block: int
    seq: int
    platform: str
    benchmark: str
    warmup: bool
    metrics: dict[str, float]
    exit_code: int | None
    error: str | None
    steal_pct: float | None

    @property
    def not_applicable(self) -> bool:
        """The platform cannot take this measurement at all (errors.NotApplicable): no figure, no failure."""
        return self.error is not None and self.error.startswith(NOT_APPLICABLE)

    @property
    def failed(self) -> bool:
        """The tool or the platform failed: the sample's metrics are not trusted."""
        if self.not_applicable:
            return False
        return self.error is not None or self.exit_code not in (None, 0)


@dataclass(frozen=True)
class RunResult:
    """The isobench section of one run (several files when it was resumed)."""

    paths: tuple[Path, ...]
    run_id: str
    profile: str
    seed: int | None
    blocks: int | None
    status: str
    started: str | None
    finished: str | None
    commit: str | None
    host: dict[str, object]
    image: dict[str, object]
    platforms: dict[str, dict[str, object]]
    skipped: dict[str, str]
    benchmarks: dict[str, BenchmarkInfo]
    samples: tuple[Sample, ...]
    enforcement: tuple[dict[str, object], ...] = ()  # enforcement records (enforce runs)


def _bad(path: Path, what: str) -> UserError:
    return UserError(f"{path}: {what}; expected an isobench result file (schema_version 1 or 2)")


def _typed(value: object, kind: type[T], path: Path, where: str) -> T:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _bad(path, f"{where} should be {kind.__name__}, got {type(value).__name__}")
    return value


def _optional(value: object, kind: type[T], path: Path, where: str) -> T | None:
    return None if value is None else _typed(value, kind, path, where)


def _number(value: object, path: Path, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(path, f"{where} should be a number, got {type(value).__name__}")
    return float(value)


def _benchmark(name: str, raw: object, path: Path) -> BenchmarkInfo:
    where = f"isobench.benchmarks[{name!r}]"
    entry = _typed(raw, dict, path, where)
    metrics = []
    for i, m in enumerate(_typed(entry.get("metrics"), list, path, f"{where}.metrics")):
        m = _typed(m, dict, path, f"{where}.metrics[{i}]")
        metrics.append(
            MetricInfo(
                _typed(m.get("name"), str, path, f"{where}.metrics[{i}].name"),
                str(m.get("unit", "")),
                _typed(
                    m.get("higher_is_better"), bool, path, f"{where}.metrics[{i}].higher_is_better"
                ),
            )
        )
    primary = _typed(entry.get("primary"), str, path, f"{where}.primary")
    if primary not in {m.name for m in metrics}:
        raise _bad(path, f"{where}.primary {primary!r} is not one of its metrics")
    category = _typed(entry.get("category"), str, path, f"{where}.category")
    return BenchmarkInfo(name, category, primary, tuple(metrics))


def _sample(raw: object, index: int, benchmarks: dict[str, BenchmarkInfo], path: Path) -> Sample:
    where = f"isobench.samples[{index}]"
    entry = _typed(raw, dict, path, where)
    benchmark = _typed(entry.get("benchmark"), str, path, f"{where}.benchmark")
    if benchmark not in benchmarks:
        raise _bad(path, f"{where}.benchmark {benchmark!r} is not in isobench.benchmarks")
    metrics = _typed(entry.get("metrics") or {}, dict, path, f"{where}.metrics")
    confounders = _typed(entry.get("confounders") or {}, dict, path, f"{where}.confounders")
    steal = confounders.get("steal_pct")
    return Sample(
        block=_typed(entry.get("block"), int, path, f"{where}.block"),
        seq=_typed(entry.get("seq"), int, path, f"{where}.seq"),
        platform=_typed(entry.get("platform"), str, path, f"{where}.platform"),
        benchmark=benchmark,
        warmup=_typed(entry.get("warmup", False), bool, path, f"{where}.warmup"),
        metrics={str(k): _number(v, path, f"{where}.metrics.{k}") for k, v in metrics.items()},
        exit_code=_optional(entry.get("exit_code"), int, path, f"{where}.exit_code"),
        error=_optional(entry.get("error"), str, path, f"{where}.error"),
        steal_pct=None if steal is None else _number(steal, path, f"{where}.confounders.steal_pct"),
    )


def _load_one(path: Path) -> RunResult:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise _bad(path, f"cannot read ({err.strerror or err})") from err
    except UnicodeDecodeError as err:
        raise _bad(path, "not UTF-8 text") from err
    except json.JSONDecodeError as err:
        raise _bad(path, f"not JSON ({err.msg} at line {err.lineno})") from err
    top = _typed(document, dict, path, "the document")
    section = _typed(top.get("isobench"), dict, path, "the isobench section")
    if section.get("schema_version") not in SCHEMA_VERSIONS:
        raise _bad(path, f"unsupported schema_version {section.get('schema_version')!r}")
    status = _typed(section.get("status"), str, path, "isobench.status")
    if status not in STATUSES:
        raise _bad(path, f"isobench.status {status!r} is not one of {', '.join(STATUSES)}")
    raw_benchmarks = _typed(section.get("benchmarks"), dict, path, "isobench.benchmarks")
    benchmarks = {str(k): _benchmark(str(k), v, path) for k, v in raw_benchmarks.items()}
    raw_samples = _typed(section.get("samples"), list, path, "isobench.samples")
    platforms = _typed(section.get("platforms") or {}, dict, path, "isobench.platforms")
    commit = top.get("commit_info")
    return RunResult(
        paths=(path,),
        run_id=_typed(section.get("run_id"), str, path, "isobench.run_id"),
        profile=str(section.get("profile", "?")),
        seed=_optional(section.get("seed"), int, path, "isobench.seed"),
        blocks=_optional(section.get("blocks"), int, path, "isobench.blocks"),
        status=status,
        started=str(section.get("started") or top.get("datetime") or "") or None,
        finished=_optional(section.get("finished"), str, path, "isobench.finished"),
        commit=str(commit.get("id")) if isinstance(commit, dict) and commit.get("id") else None,
        host=_typed(section.get("host") or {}, dict, path, "isobench.host"),
        image=_typed(section.get("image") or {}, dict, path, "isobench.image"),
        platforms={str(k): v if isinstance(v, dict) else {} for k, v in platforms.items()},
        skipped={
            str(k): str(v)
            for k, v in _typed(section.get("skipped") or {}, dict, path, "isobench.skipped").items()
        },
        benchmarks=benchmarks,
        samples=tuple(_sample(s, i, benchmarks, path) for i, s in enumerate(raw_samples)),
        enforcement=_enforcement(section.get("enforcement", []), path),
    )


def _enforcement(raw: object, path: Path) -> tuple[dict[str, object], ...]:
    from harness.enforcement.model import check_record

    records = _typed(raw, list, path, "isobench.enforcement")
    try:
        return tuple(check_record(r, f"isobench.enforcement[{i}]") for i, r in enumerate(records))
    except ValueError as err:
        raise _bad(path, str(err)) from err


def _merge(parts: list[RunResult]) -> RunResult:
    """One run resumed: the union of its files' samples, each (block, seq, platform, benchmark) once."""
    first = parts[0]
    for other in parts[1:]:
        for fact in HOST_FACTS:
            if first.host.get(fact) != other.host.get(fact):
                raise UserError(
                    f"{other.paths[0]}: same run {first.run_id} as {first.paths[0]} but host fact "
                    f"{fact} differs ({first.host.get(fact)!r} vs {other.host.get(fact)!r}); refusing to merge"
                )
    unique: dict[tuple[int, int, str, str], Sample] = {}
    for part in parts:
        for s in part.samples:
            unique.setdefault((s.block, s.seq, s.platform, s.benchmark), s)
    statuses = {p.status for p in parts}
    status = next(s for s in ("complete", "interrupted", "running") if s in statuses)
    finished = [p.finished for p in parts if p.finished]
    return dataclasses.replace(
        first,
        paths=tuple(p for part in parts for p in part.paths),
        status=status,
        finished=max(finished) if finished else None,
        platforms={k: v for part in reversed(parts) for k, v in part.platforms.items()},
        skipped={k: v for part in reversed(parts) for k, v in part.skipped.items()},
        benchmarks={k: v for part in reversed(parts) for k, v in part.benchmarks.items()},
        samples=tuple(sorted(unique.values(), key=lambda s: (s.block, s.seq))),
        enforcement=max((p.enforcement for p in parts), key=len),  # enforce runs do not resume
    )


def load_results(paths: Iterable[Path | str]) -> list[RunResult]:
    """Read and validate result files; files of the same run_id are merged, in first-seen order."""
    by_run: dict[str, list[RunResult]] = {}
    for path in paths:
        one = _load_one(Path(path))
        by_run.setdefault(one.run_id, []).append(one)
    if not by_run:
        raise UserError("no result files given; accepted: one or more isobench result JSON files")
    return [_merge(parts) for parts in by_run.values()]


def host_differences(results: Sequence[RunResult]) -> list[str]:
    """The key host facts that differ between runs, as 'fact: a vs b' lines."""
    lines = []
    for fact in HOST_FACTS:
        seen = list(dict.fromkeys(repr(r.host.get(fact)) for r in results))
        if len(seen) > 1:
            lines.append(f"{fact}: {' vs '.join(seen)}")
    return lines
