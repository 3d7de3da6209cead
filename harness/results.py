"""One versioned result record per run, in pytest-benchmark's JSON layout plus an "isobench" section.

`pytest-benchmark compare FILE` reads the file as is: "machine_info", "commit_info",
"benchmarks" (one entry per (benchmark, platform) with at least one good sample),
"datetime" and "version" follow pytest-benchmark; "isobench" holds everything
else, above all every raw sample. The "benchmarks" list is derived from the raw
samples at every write (warm-up and failed samples left out) and never read back.

pytest-benchmark's stats are times, lower is better. Each entry's "stats" are
therefore over the primary metric expressed as SECONDS PER UNIT OF WORK:

- higher-is-better rate r (events/s, MiB/s, IOPS): 1 / r, seconds per event,
  per MiB, per IO; a rate <= 0 has no such value and is left out;
- lower-is-better time (unit s, ms, us or ns, or per-op forms like "ns/call"):
  the value in seconds;
- any other lower-is-better unit (say, MiB of peak memory): the value as is.

The metric's own values stay in the raw samples and, as medians, in each entry's
"extra_info"; reports compute ratios from the raw samples.

Format history of the "isobench" section (SCHEMA_VERSION):
  1: first version.
  2: optional "enforcement": a list of enforcement test records (harness.enforcement.model.Record);
     version 1 files still load (they have none).
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import os
import platform as host_platform
import re
import socket
import statistics
import subprocess
from bisect import bisect_left, bisect_right
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest_benchmark

from harness.errors import OSFailure, UserError
from harness.workloads.base import Workload

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)  # what load() accepts
WARMUP_BLOCK = -1  # the block number of warm-up samples
STATUSES = ("running", "complete", "interrupted")
ACCEPTED = f"accepted: an isobench result file (JSON, schema_version {' or '.join(map(str, READABLE_VERSIONS))}) written by `isobench run`"
_TIME_UNITS_S = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
# Placeholders for the parts spliced in from cached encodings (NUL: no real value holds it).
_ENTRIES_MARKER = "\0isobench-benchmarks\0"
_SAMPLES_MARKER = "\0isobench-samples\0"
_TOP_KEYS: dict[str, type | tuple[type, ...]] = {
    "machine_info": dict, "commit_info": dict, "benchmarks": list, "datetime": str,
    "version": str, "isobench": dict,
}  # fmt: skip
_ISOBENCH_KEYS: dict[str, type | tuple[type, ...]] = {
    "schema_version": int, "run_id": str, "profile": str, "seed": int, "blocks": int,
    "status": str, "started": str, "finished": (str, type(None)), "host": dict, "image": dict,
    "platforms": dict, "skipped": dict, "benchmarks": dict, "samples": list,
}  # fmt: skip
_SAMPLE_KEYS: dict[str, type | tuple[type, ...]] = {
    "block": int, "seq": int, "platform": str, "benchmark": str, "warmup": bool,
    "metrics": dict, "wall_s": (int, float), "exit_code": int, "error": (str, type(None)),
    "confounders": dict, "resources": dict, "time": str,
}  # fmt: skip

Key = tuple[int, str, str]  # (block, platform, benchmark)


def utc_now() -> str:
    """The current time, ISO-8601 in UTC."""
    return datetime.now(UTC).isoformat()


@dataclass(frozen=True)
class Sample:
    """One run of one benchmark on one platform; block WARMUP_BLOCK for warm-up samples."""

    block: int
    seq: int  # position in the run, 0, 1, 2 ... across resumes
    platform: str
    benchmark: str
    warmup: bool
    metrics: dict[str, float]
    wall_s: float
    exit_code: int
    error: str | None  # None: a good sample
    confounders: dict[str, float] = field(default_factory=dict)  # steal_pct, load1, cpu_pct
    resources: dict[str, float] = field(default_factory=dict)
    time: str = field(default_factory=utc_now)

    @property
    def key(self) -> Key:
        return (self.block, self.platform, self.benchmark)


@dataclass
class RunHeader:
    """What a new result file records before its first sample."""

    run_id: str
    profile: str
    seed: int
    blocks: int  # planned
    host: dict[str, object] = field(default_factory=dict)  # host.py's facts
    image_ref: str = "unknown"
    image_digest: str = "unknown"
    tools: dict[str, str] = field(default_factory=dict)  # tool -> version
    skipped: dict[str, str] = field(default_factory=dict)  # platform -> reason
    # Normally left empty: run_blocks declares exactly the platforms and benchmarks it runs,
    # and a resume checks that it is asked for the same ones.
    platforms: dict[str, dict[str, object]] = field(default_factory=dict)  # name -> describe()
    benchmarks: dict[str, dict[str, object]] = field(default_factory=dict)  # see benchmark_record
    machine_info: dict[str, object] | None = None  # None: this machine
    commit_info: dict[str, object] | None = None  # None: the git checkout of this package


def benchmark_record(workload: Workload) -> dict[str, object]:
    """How a benchmark is described in isobench.benchmarks."""
    return {
        "category": workload.category,
        "primary": workload.primary,
        "metrics": [
            {"name": m.name, "unit": m.unit, "higher_is_better": m.higher_is_better}
            for m in workload.metrics
        ],
        "sizes": dict(workload.sizes),
    }


def seconds_per_unit(value: float, unit: str, higher_is_better: bool) -> float | None:
    """The value as pytest-benchmark's lower-is-better time (see the module docstring)."""
    if higher_is_better:
        return 1.0 / value if value > 0 else None
    return value * _TIME_UNITS_S.get(unit.split("/")[0].strip(), 1.0)


def machine_info() -> dict[str, object]:
    """pytest-benchmark's machine_info for this machine, without the slow cpuinfo probe."""
    uname = host_platform.uname()
    brand = uname.processor or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                brand = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "node": uname.node,
        "processor": uname.processor,
        "machine": uname.machine,
        "python_implementation": host_platform.python_implementation(),
        "python_version": host_platform.python_version(),
        "python_compiler": host_platform.python_compiler(),
        "release": uname.release,
        "system": uname.system,
        "cpu": {"brand_raw": brand, "count": os.cpu_count() or 0, "arch": uname.machine},
    }


def commit_info(repo: Path | None = None) -> dict[str, object]:
    """pytest-benchmark's commit_info from git (read-only queries); "unknown" outside a checkout."""
    where = repo if repo is not None else Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        # --no-optional-locks: `git status` would otherwise refresh (write) the index.
        cmd = ["git", "--no-optional-locks", "-C", str(where), *args]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"id": "unknown", "time": "unknown", "author_time": "unknown", "dirty": False,
                "project": "isobench", "branch": "unknown"}  # fmt: skip
    return {
        "id": commit,
        "time": git("show", "-s", "--format=%cI", "HEAD") or "unknown",
        "author_time": git("show", "-s", "--format=%aI", "HEAD") or "unknown",
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "project": "isobench",
        "branch": git("rev-parse", "--abbrev-ref", "HEAD") or "unknown",
    }


def machine_id() -> str:
    """/etc/machine-id if readable, else a hash of the host name."""
    try:
        found = Path("/etc/machine-id").read_text().strip()
    except OSError:
        found = ""
    return found or hashlib.sha256(socket.gethostname().encode()).hexdigest()[:32]


def path_for(results_dir: Path, machine: str, commit: str, profile: str, when: datetime) -> Path:
    """results/<machine-id>/<UTC time>_<commit short>_<profile>.json, suffixed so it never overwrites."""
    if when.tzinfo is None:
        raise ValueError("path_for needs an aware datetime")

    def safe(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]", "-", text) or "unknown"

    stamp = when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    stem = f"{stamp}_{safe(commit[:7])}_{safe(profile)}"
    folder = Path(results_dir) / safe(machine)
    candidate, n = folder / f"{stem}.json", 1
    while candidate.exists():
        candidate, n = folder / f"{stem}_{n}.json", n + 1
    return candidate


def _stats(data: list[float]) -> dict[str, Any]:
    """pytest-benchmark's saved stats (Stats.as_dict(), "data", "iterations"), with its quartile method."""
    s = sorted(data)
    n = len(s)
    if n == 1:
        q1 = q3 = s[0]
    elif n % 2:
        k, r = n // 4, n % 4
        q1 = 0.25 * s[k - 1] + 0.75 * s[k] if r == 1 else 0.75 * s[k] + 0.25 * s[k + 1]
        q3 = 0.75 * s[3 * k] + 0.25 * s[3 * k + 1] if r == 1 else 0.25 * s[3 * k + 1] + 0.75 * s[3 * k + 2]  # fmt: skip
    else:
        q1, q3 = statistics.median(s[: n // 2]), statistics.median(s[n // 2 :])
    iqr = q3 - q1
    mean = statistics.mean(s)
    stddev = statistics.stdev(s) if n > 1 else 0.0
    std_out = sum(1 for v in s if v < mean - stddev or v > mean + stddev)
    iqr_out = sum(1 for v in s if v < q1 - 1.5 * iqr or v > q3 + 1.5 * iqr)
    total = math.fsum(s)
    return {
        "min": s[0], "max": s[-1], "mean": mean, "stddev": stddev, "rounds": n,
        "median": statistics.median(s), "iqr": iqr, "q1": q1, "q3": q3,
        "iqr_outliers": iqr_out, "stddev_outliers": std_out, "outliers": f"{std_out};{iqr_out}",
        "ld15iqr": s[bisect_left(s, q1 - 1.5 * iqr)] if n > 1 else s[0],
        "hd15iqr": s[bisect_right(s, q3 + 1.5 * iqr) - 1],
        "ops": n / total if total else 0, "total": total, "data": list(data),
        "iterations": 1,  # pytest-benchmark's compare needs it: one sample is one round
    }  # fmt: skip


def _check(obj: dict[str, Any], keys: dict[str, type | tuple[type, ...]], where: str) -> None:
    for key, kind in keys.items():
        if key not in obj:
            raise ValueError(f"{where} has no {key!r}")
        value = obj[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ValueError(f"{where}[{key!r}] is {type(value).__name__}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_benchmark(name: str, declared: object) -> None:
    """A declared benchmark as benchmark_record() writes it."""
    where = f"isobench.benchmarks[{name!r}]"
    if not isinstance(declared, dict):
        raise ValueError(f"{where} is not an object")
    _check(declared, {"category": str, "primary": str, "metrics": list, "sizes": dict}, where)
    for metric in declared["metrics"]:
        if not isinstance(metric, dict):
            raise ValueError(f"{where} has a metric that is not an object")
        _check(metric, {"name": str, "unit": str, "higher_is_better": bool}, f"{where} metric")
    if declared["primary"] not in {m["name"] for m in declared["metrics"]}:
        raise ValueError(f"{where} primary {declared['primary']!r} is not among its metrics")


def _check_enforcement(records: object) -> None:
    """isobench.enforcement as add_enforcement() writes it."""
    from harness.enforcement.model import check_record

    if not isinstance(records, list):
        raise ValueError("isobench.enforcement is not a list")
    for i, raw in enumerate(records):
        check_record(raw, f"isobench.enforcement[{i}]")


class ResultFile:
    """A run's result file: the header, every sample so far, rewritten atomically after each one."""

    def __init__(self, path: Path, head: dict[str, Any], samples: list[Sample]) -> None:
        """Use create() or load()."""
        self.path = Path(path)
        self._head = head  # the document without "benchmarks" and isobench "samples"
        self._samples: list[Sample] = []
        self._encoded: list[str] = []  # each sample's JSON, so a write does not re-encode them all
        self._by_pair: dict[tuple[str, str], list[Sample]] = collections.defaultdict(list)
        self._entries: dict[tuple[str, str], str] = {}  # derived "benchmarks" entries, encoded
        for sample in samples:
            self._add(sample)

    @classmethod
    def create(cls, path: Path, header: RunHeader) -> ResultFile:
        """Start a new run's file at path; refuses to overwrite an existing file."""
        path = Path(path)
        iso: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION, "run_id": header.run_id, "profile": header.profile,
            "seed": header.seed, "blocks": header.blocks, "status": "running",
            "started": utc_now(), "finished": None, "host": dict(header.host),
            "image": {"ref": header.image_ref, "digest": header.image_digest, "tools": dict(header.tools)},
            "platforms": dict(header.platforms), "skipped": dict(header.skipped),
            "benchmarks": dict(header.benchmarks),
        }  # fmt: skip
        head = {
            "machine_info": header.machine_info or machine_info(),
            "commit_info": header.commit_info or commit_info(),
            "datetime": iso["started"],
            "version": pytest_benchmark.__version__,
            "isobench": iso,
        }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "x"):  # reserve the name: a concurrent run cannot take it too
                pass
        except FileExistsError:
            raise UserError(f"{path}: already exists; accepted: a new path (to continue that run: --resume {path})") from None  # fmt: skip
        except OSError as exc:
            raise OSFailure("create result file", str(path), exc.errno or 0) from exc
        result = cls(path, head, [])
        try:
            result._write()
        except OSFailure:
            path.unlink(missing_ok=True)
            raise
        return result

    @classmethod
    def load(cls, path: Path) -> ResultFile:
        """Read and validate a result file; UserError (one line) when it is not one."""
        path = Path(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise UserError(f"{path}: cannot read ({exc.strerror}); {ACCEPTED}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: not valid JSON ({exc}); {ACCEPTED}") from None
        try:
            if not isinstance(doc, dict):
                raise ValueError("the top level is not an object")
            _check(doc, _TOP_KEYS, "the file")
            iso = doc["isobench"]
            if iso.get("schema_version") not in READABLE_VERSIONS:
                raise ValueError(f"schema_version {iso.get('schema_version')!r} is not one of {READABLE_VERSIONS}")  # fmt: skip
            _check(iso, _ISOBENCH_KEYS, "isobench")
            if iso["status"] not in STATUSES:
                raise ValueError(f"status {iso['status']!r} is not one of {', '.join(STATUSES)}")
            for name, declared in iso["benchmarks"].items():
                _check_benchmark(name, declared)
            _check_enforcement(iso.get("enforcement", []))
            samples = []
            for i, raw in enumerate(iso.pop("samples")):
                if not isinstance(raw, dict):
                    raise ValueError(f"sample {i} is not an object")
                _check(raw, _SAMPLE_KEYS, f"sample {i}")
                if raw["benchmark"] not in iso["benchmarks"]:
                    raise ValueError(f"sample {i} is of undeclared benchmark {raw['benchmark']!r}")
                if not all(_is_number(v) for v in raw["metrics"].values()):
                    raise ValueError(f"sample {i} has a metric that is not a number")
                samples.append(Sample(**{k: raw[k] for k in _SAMPLE_KEYS}))
            del doc["benchmarks"]  # derived: recomputed from the samples
            return cls(path, doc, samples)
        except (ValueError, TypeError, KeyError) as exc:
            raise UserError(f"{path}: {exc}; {ACCEPTED}") from None

    # --- what the file holds

    @property
    def samples(self) -> tuple[Sample, ...]:
        return tuple(self._samples)

    @property
    def seed(self) -> int:
        return int(self._iso["seed"])

    @property
    def blocks(self) -> int:
        return int(self._iso["blocks"])

    @property
    def status(self) -> str:
        return str(self._iso["status"])

    @property
    def info(self) -> dict[str, Any]:
        """The "isobench" section without its samples (a copy): run_id, profile, platforms ..."""
        info: dict[str, Any] = json.loads(json.dumps(self._iso))
        return info

    def document(self) -> dict[str, Any]:
        """The whole document as written to the file."""
        result: dict[str, Any] = json.loads(self._render())
        return result

    def done_keys(self) -> set[Key]:
        """(block, platform, benchmark) of every sample taken, failed ones included."""
        return {sample.key for sample in self._samples}

    def key_counts(self) -> collections.Counter[Key]:
        """How many samples each key has (startup takes several per block)."""
        return collections.Counter(sample.key for sample in self._samples)

    # --- changes; each one is on disk when the method returns

    def append(self, sample: Sample) -> None:
        """Record one sample and rewrite the file atomically."""
        if sample.seq != len(self._samples):
            raise ValueError(f"sample seq {sample.seq}, expected {len(self._samples)}")
        if sample.benchmark not in self._iso["benchmarks"]:
            raise ValueError(f"benchmark {sample.benchmark!r} is not declared")
        self._add(sample)
        self._write()

    @property
    def enforcement(self) -> list[dict[str, Any]]:
        """The enforcement test records (a copy; [] for a run without any)."""
        records: list[dict[str, Any]] = json.loads(json.dumps(self._iso.get("enforcement", [])))
        return records

    def add_enforcement(self, record: dict[str, Any]) -> None:
        """Append one enforcement record to isobench.enforcement and rewrite the file atomically."""
        _check_enforcement([record])
        json.dumps(record, allow_nan=False)  # refused here, before anything changes
        self._iso.setdefault("enforcement", []).append(record)
        self._write()

    def declare_benchmark(self, workload: Workload) -> None:
        """Describe a benchmark in isobench.benchmarks (needed before its first sample)."""
        self._set("benchmarks", workload.benchmark, benchmark_record(workload))

    def declare_platform(self, name: str, description: dict[str, object]) -> None:
        """Record a platform's describe() in isobench.platforms."""
        self._set("platforms", name, dict(description))

    def set_blocks(self, blocks: int) -> None:
        """Change the planned block count (a resume may extend a run)."""
        if blocks != self.blocks:
            self._iso["blocks"] = blocks
            self._write()

    def reopen(self) -> None:
        """Mark the run as running again (resume)."""
        self._iso["status"], self._iso["finished"] = "running", None
        self._write()

    def finish(self, status: str) -> None:
        """Mark the run as ended: "complete" or "interrupted"."""
        if status not in STATUSES[1:]:
            raise ValueError(f"finish status {status!r}; accepted: complete, interrupted")
        self._iso["status"], self._iso["finished"] = status, utc_now()
        self._write()

    # --- internals

    @property
    def _iso(self) -> dict[str, Any]:
        iso: dict[str, Any] = self._head["isobench"]
        return iso

    def _set(self, section: str, name: str, value: dict[str, Any]) -> None:
        if self._iso[section].get(name) != value:
            self._iso[section][name] = value
            self._write()

    def _add(self, sample: Sample) -> None:
        # allow_nan=False: strict JSON; a NaN metric is refused here, before anything changes.
        encoded = json.dumps(asdict(sample), allow_nan=False)
        self._samples.append(sample)
        self._encoded.append(encoded)
        pair = (sample.benchmark, sample.platform)
        self._by_pair[pair].append(sample)
        entry = self._entry(pair)
        if entry is None:
            self._entries.pop(pair, None)
        else:
            self._entries[pair] = json.dumps(entry, allow_nan=False)

    def _entry(self, pair: tuple[str, str]) -> dict[str, Any] | None:
        """The pytest-benchmark "benchmarks" entry of one (benchmark, platform)."""
        bench, plat = pair
        declared = self._iso["benchmarks"].get(bench)
        if declared is None:
            return None
        units = {m["name"]: m for m in declared["metrics"]}
        primary = units[declared["primary"]]
        good = [s for s in self._by_pair[pair] if not s.warmup and s.error is None]
        data = []
        for s in good:
            if primary["name"] in s.metrics:
                value = seconds_per_unit(s.metrics[primary["name"]], primary["unit"], primary["higher_is_better"])  # fmt: skip
                if value is not None:
                    data.append(value)
        if not data:
            return None
        medians = {}
        for name, metric in units.items():
            values = [s.metrics[name] for s in good if name in s.metrics]
            if values:
                medians[name] = {"unit": metric["unit"], "median": statistics.median(values)}
        return {
            "group": declared["category"], "name": f"{bench}[{plat}]",
            "fullname": f"isobench::{bench}[{plat}]",
            "params": {"platform": plat, "benchmark": bench}, "param": plat,
            "extra_info": {"metric": primary["name"], "unit": primary["unit"],
                           "higher_is_better": primary["higher_is_better"], "metrics": medians},
            "options": {"disable_gc": False, "timer": "isobench", "min_rounds": 1,
                        "max_time": 0.0, "min_time": 0.0, "warmup": True},
            "stats": _stats(data),
        }  # fmt: skip

    def _render(self) -> str:
        doc = {
            "machine_info": self._head["machine_info"],
            "commit_info": self._head["commit_info"],
            "benchmarks": _ENTRIES_MARKER,
            "datetime": self._head["datetime"],
            "version": self._head["version"],
            "isobench": {**self._iso, "samples": _SAMPLES_MARKER},
        }
        # The derived entries and the samples are spliced in from their cached encodings,
        # one per line: re-encoding thousands of samples at every append would dominate its cost.
        text = json.dumps(doc, indent=1, allow_nan=False)
        for marker, items in ((_ENTRIES_MARKER, [self._entries[k] for k in sorted(self._entries)]),
                              (_SAMPLES_MARKER, self._encoded)):  # fmt: skip
            before, found, after = text.partition(json.dumps(marker))
            assert found, marker
            text = before + ("[\n" + ",\n".join(items) + "\n]" if items else "[]") + after
        return text

    def _write(self) -> None:
        """Write temp file + fsync + rename: a kill leaves the old or the new file, never half of one."""
        text = self._render()
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            folder = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)  # the rename itself survives a crash of the machine
            finally:
                os.close(folder)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise OSFailure("write result file", str(self.path), exc.errno or 0) from exc
