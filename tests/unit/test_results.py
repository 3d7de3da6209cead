"""The result file: pytest-benchmark layout, derived stats, atomic writes, validation, paths."""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pytest_benchmark.stats import Stats

from harness import results as results_mod
from harness.errors import OSFailure, UserError
from harness.results import (
    SCHEMA_VERSION,
    WARMUP_BLOCK,
    ResultFile,
    RunHeader,
    Sample,
    _stats,
    commit_info,
    machine_id,
    path_for,
    seconds_per_unit,
)
from harness.workloads.base import Metric, Workload

PYTEST_BENCHMARK = Path(sys.executable).parent / "pytest-benchmark"


def _no_parse(stdout: str) -> dict[str, float]:
    return {}


RATE = Workload(
    benchmark="cpu.rate",
    category="cpu",
    argv=("true",),
    metrics=(Metric("events_per_s", "events/s", True), Metric("latency_ms", "ms", False)),
    primary="events_per_s",
    parse=_no_parse,
    sizes={"events": 10},
)
LATENCY = Workload(
    benchmark="ipc.pipe",
    category="ipc",
    argv=("true",),
    metrics=(Metric("rtt_us", "us", False),),
    primary="rtt_us",
    parse=_no_parse,
)


def header(**kw: object) -> RunHeader:
    fields: dict[str, object] = {
        "run_id": "run-1",
        "profile": "smoke",
        "seed": 42,
        "blocks": 3,
        "host": {"kernel": "6.1", "cgroup": 1},
        "image_ref": "workload:latest",
        "image_digest": "sha256:abc",
        "tools": {"sysbench": "1.0.20"},
        "skipped": {"vm": "KVM does not run guests here"},
        **kw,
    }
    return RunHeader(**fields)  # type: ignore[arg-type]


def sample(seq: int, block: int, platform: str, benchmark: str, **metrics: float) -> Sample:
    return Sample(
        block=block,
        seq=seq,
        platform=platform,
        benchmark=benchmark,
        warmup=block == WARMUP_BLOCK,
        metrics=dict(metrics),
        wall_s=1.0,
        exit_code=0,
        error=None,
        confounders={"steal_pct": 0.0, "load1": 0.5, "cpu_pct": 50.0},
        resources={"cpu_s": 0.9},
    )


def filled(path: Path) -> ResultFile:
    """A file with a warm-up sample, three blocks of two benchmarks on two platforms, one failure."""
    result = ResultFile.create(path, header())
    result.declare_benchmark(RATE)
    result.declare_benchmark(LATENCY)
    result.declare_platform("bare", {"kind": "bare"})
    result.declare_platform("container", {"kind": "container"})
    seq = 0
    for block in (WARMUP_BLOCK, 0, 1, 2):
        for platform, speed in (("bare", 1.0), ("container", 0.98)):
            rate = 1000.0 * speed + block  # the warm-up is slow: 999 / 979
            result.append(sample(seq, block, platform, "cpu.rate", events_per_s=rate, latency_ms=1000 / rate))  # fmt: skip
            result.append(sample(seq + 1, block, platform, "ipc.pipe", rtt_us=10.0 / speed + block))
            seq += 2
    failed = sample(seq, 2, "container", "ipc.pipe", rtt_us=1e9)
    result.append(Sample(**{**failed.__dict__, "error": "exit code 1; stderr: boom", "exit_code": 1}))  # fmt: skip
    return result


def test_round_trip_keeps_every_sample_and_the_header(tmp_path: Path) -> None:
    written = filled(tmp_path / "r.json")
    loaded = ResultFile.load(tmp_path / "r.json")
    assert loaded.samples == written.samples
    assert len(loaded.samples) == 17
    assert loaded.seed == 42 and loaded.blocks == 3 and loaded.status == "running"
    info = loaded.info
    assert info["image"] == {"ref": "workload:latest", "digest": "sha256:abc", "tools": {"sysbench": "1.0.20"}}  # fmt: skip
    assert info["skipped"] == {"vm": "KVM does not run guests here"}
    assert info["benchmarks"]["cpu.rate"]["metrics"][0] == {"name": "events_per_s", "unit": "events/s", "higher_is_better": True}  # fmt: skip
    assert info["benchmarks"]["cpu.rate"]["sizes"] == {"events": 10}
    assert loaded.done_keys() == {s.key for s in written.samples}
    assert (0, "bare", "cpu.rate") in loaded.done_keys()
    assert loaded.document() == json.loads((tmp_path / "r.json").read_text())


def test_document_follows_the_schema(tmp_path: Path) -> None:
    filled(tmp_path / "r.json")
    doc = json.loads((tmp_path / "r.json").read_text())
    assert list(doc) == ["machine_info", "commit_info", "benchmarks", "datetime", "version", "isobench"]  # fmt: skip
    assert set(doc["machine_info"]) >= {"node", "processor", "machine", "python_implementation", "python_version", "python_compiler", "release", "system", "cpu"}  # fmt: skip
    assert set(doc["machine_info"]["cpu"]) == {"brand_raw", "count", "arch"}
    assert set(doc["commit_info"]) == {"id", "time", "author_time", "dirty", "project", "branch"}
    assert doc["commit_info"]["project"] == "isobench"
    assert datetime.fromisoformat(doc["datetime"]).utcoffset() is not None
    iso = doc["isobench"]
    assert list(iso) == ["schema_version", "run_id", "profile", "seed", "blocks", "status", "started", "finished", "host", "image", "platforms", "skipped", "benchmarks", "samples"]  # fmt: skip
    assert iso["schema_version"] == SCHEMA_VERSION
    assert set(iso["samples"][0]) == {"block", "seq", "platform", "benchmark", "warmup", "metrics", "wall_s", "exit_code", "error", "confounders", "resources", "time"}  # fmt: skip
    entry = next(b for b in doc["benchmarks"] if b["name"] == "cpu.rate[container]")
    assert entry["group"] == "cpu"
    assert entry["fullname"] == "isobench::cpu.rate[container]"
    assert entry["params"] == {"platform": "container", "benchmark": "cpu.rate"}
    assert entry["param"] == "container"
    assert entry["options"]["timer"] == "isobench"
    assert entry["extra_info"]["metric"] == "events_per_s"
    assert entry["extra_info"]["higher_is_better"] is True
    assert entry["extra_info"]["metrics"]["events_per_s"] == {"unit": "events/s", "median": 981.0}


def test_stats_are_seconds_per_unit_of_work_without_warmup_or_failures(tmp_path: Path) -> None:
    doc = filled(tmp_path / "r.json").document()
    entries = {b["name"]: b for b in doc["benchmarks"]}
    assert sorted(entries) == ["cpu.rate[bare]", "cpu.rate[container]", "ipc.pipe[bare]", "ipc.pipe[container]"]  # fmt: skip
    rate = entries["cpu.rate[bare]"]["stats"]
    assert rate["rounds"] == 3  # the warm-up sample is not in the stats
    assert rate["data"] == pytest.approx(
        [1 / 1000, 1 / 1001, 1 / 1002]
    )  # rate -> seconds per event
    pipe = entries["ipc.pipe[container]"]["stats"]
    assert pipe["rounds"] == 3  # the failed sample (1e9 us) is not either
    assert pipe["max"] < 1e-4
    assert pipe["data"][0] == pytest.approx(10.0 / 0.98 * 1e-6)  # us -> s
    assert seconds_per_unit(2.0, "ms", False) == 0.002
    assert seconds_per_unit(250.0, "ns/call", False) == pytest.approx(2.5e-7)
    assert seconds_per_unit(64.0, "MiB", False) == 64.0
    assert seconds_per_unit(0.0, "MiB/s", True) is None


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 25])
def test_stats_equal_pytest_benchmarks_own(n: int) -> None:
    rng = random.Random(n)
    data = [rng.lognormvariate(0, 0.3) for _ in range(n)]
    theirs = Stats()  # type: ignore[no-untyped-call]
    for value in data:
        theirs.update(value)  # type: ignore[no-untyped-call]
    mine = _stats(data)
    for key, value in theirs.as_dict().items():  # type: ignore[no-untyped-call]
        assert mine[key] == pytest.approx(value), key
    assert mine["data"] == data


def test_pytest_benchmark_compare_reads_the_file(tmp_path: Path) -> None:
    filled(tmp_path / "r.json")
    done = subprocess.run(
        [str(PYTEST_BENCHMARK), "compare", str(tmp_path / "r.json")],
        cwd=tmp_path,  # pytest-benchmark makes ./.benchmarks in its working directory
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert "Failed to load" not in output
    for name in ("cpu.rate[bare]", "cpu.rate[container]", "ipc.pipe[bare]", "ipc.pipe[container]"):
        assert name in output
    assert "benchmark 'cpu'" in output and "benchmark 'ipc'" in output  # grouped by category


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"machine_info": {}, "commit_info": {', "not valid JSON"),
        ("[1, 2]", "the top level is not an object"),
        (
            '{"machine_info": {}, "commit_info": {}, "benchmarks": [], "datetime": "x", "version": "5"}',
            "the file has no 'isobench'",
        ),
        ("SCHEMA99", "schema_version 99 is not one of (1, 2)"),
        ("NOSEED", "isobench has no 'seed'"),
        ("BADSAMPLE", "sample 0['block'] is str"),
        ("UNDECLARED", "sample 0 is of undeclared benchmark 'nope'"),
        ("BADSTATUS", "status 'done' is not one of running, complete, interrupted"),
        ("BADENFORCE", "isobench.enforcement[0] has no 'reason'"),
    ],
)
def test_a_bad_file_is_a_one_line_user_error(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "bad.json"
    if content.isupper():
        doc = filled(tmp_path / "good.json").document()
        iso = doc["isobench"]
        if content == "SCHEMA99":
            iso["schema_version"] = 99
        elif content == "NOSEED":
            del iso["seed"]
        elif content == "BADSAMPLE":
            iso["samples"][0]["block"] = "one"
        elif content == "BADENFORCE":
            iso["enforcement"] = [{"test": "pids", "platform": "bare", "verdict": "ok"}]
        elif content == "UNDECLARED":
            iso["samples"][0]["benchmark"] = "nope"
        else:
            iso["status"] = "done"
        content = json.dumps(doc)
    path.write_text(content)
    with pytest.raises(UserError) as info:
        ResultFile.load(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert problem in message
    assert message.endswith("accepted: an isobench result file (JSON, schema_version 1 or 2) written by `isobench run`")  # fmt: skip


def test_a_truncated_file_and_a_missing_file_are_user_errors(tmp_path: Path) -> None:
    filled(tmp_path / "r.json")
    text = (tmp_path / "r.json").read_text()
    (tmp_path / "cut.json").write_text(text[: len(text) // 2])
    with pytest.raises(UserError, match=r"cut\.json: not valid JSON"):
        ResultFile.load(tmp_path / "cut.json")
    with pytest.raises(UserError, match=r"nothing\.json: cannot read"):
        ResultFile.load(tmp_path / "nothing.json")


def test_create_never_overwrites(tmp_path: Path) -> None:
    (tmp_path / "r.json").write_text("precious")
    with pytest.raises(UserError, match="already exists; accepted: a new path"):
        ResultFile.create(tmp_path / "r.json", header())
    assert (tmp_path / "r.json").read_text() == "precious"


def test_append_refuses_what_would_corrupt_the_record(tmp_path: Path) -> None:
    result = ResultFile.create(tmp_path / "r.json", header())
    result.declare_benchmark(RATE)
    before = (tmp_path / "r.json").read_text()
    with pytest.raises(ValueError, match="seq 3, expected 0"):
        result.append(sample(3, 0, "bare", "cpu.rate", events_per_s=1.0))
    with pytest.raises(ValueError, match="not declared"):
        result.append(sample(0, 0, "bare", "nope", events_per_s=1.0))
    with pytest.raises(ValueError, match="Out of range float"):
        result.append(sample(0, 0, "bare", "cpu.rate", events_per_s=float("nan")))
    assert (tmp_path / "r.json").read_text() == before
    assert result.samples == ()


def test_a_failed_write_leaves_the_previous_file_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = filled(tmp_path / "r.json")
    before = (tmp_path / "r.json").read_text()

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSFailure, match=r"write result file .*r.json: No space left on device"):
        result.finish("complete")
    assert (tmp_path / "r.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_finish_and_reopen(tmp_path: Path) -> None:
    result = filled(tmp_path / "r.json")
    result.finish("interrupted")
    loaded = ResultFile.load(tmp_path / "r.json")
    assert loaded.status == "interrupted" and loaded.info["finished"] is not None
    loaded.reopen()
    assert ResultFile.load(tmp_path / "r.json").info["finished"] is None
    with pytest.raises(ValueError, match="accepted: complete, interrupted"):
        loaded.finish("running")


def test_path_for_names_and_never_reuses(tmp_path: Path) -> None:
    when = datetime(2024, 5, 1, 12, 30, 5, tzinfo=UTC)
    first = path_for(tmp_path, "m1", "0123456789abcdef", "quick", when)
    assert first == tmp_path / "m1" / "20240501T123005Z_0123456_quick.json"
    ResultFile.create(first, header())
    second = path_for(tmp_path, "m1", "0123456789abcdef", "quick", when)
    assert second.name == "20240501T123005Z_0123456_quick_1.json"
    with pytest.raises(ValueError, match="aware"):
        path_for(tmp_path, "m1", "abc", "quick", datetime(2024, 5, 1))


def test_machine_and_commit_identity(tmp_path: Path) -> None:
    assert machine_id() and "/" not in machine_id()
    here = commit_info()
    repo = Path(results_mod.__file__).resolve().parents[1]
    if (repo / ".git").exists():
        assert len(str(here["id"])) == 40
    assert commit_info(tmp_path)["id"] == "unknown"


def test_append_cost_for_thousands_of_samples(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each append rewrites the whole file: measure what that costs at 2000 samples."""
    result = ResultFile.create(tmp_path / "big.json", header(blocks=50))
    workloads = [
        Workload(f"cpu.w{i}", "cpu", ("true",), RATE.metrics, "events_per_s", _no_parse)
        for i in range(10)
    ]
    for w in workloads:
        result.declare_benchmark(w)
    costs = []
    seq = 0
    for block in range(50):
        for w in workloads:
            for platform in ("bare", "container", "oci:runc", "vm"):
                t0 = time.perf_counter()
                result.append(sample(seq, block, platform, w.benchmark, events_per_s=1000.0 + seq, latency_ms=1.0))  # fmt: skip
                costs.append(time.perf_counter() - t0)
                seq += 1
    size_kib = os.path.getsize(tmp_path / "big.json") / 1024
    with capsys.disabled():
        print(
            f"\nresult file append: {len(costs)} samples, {size_kib:.0f} KiB at the end; per append "
            f"median {statistics.median(costs[:100]) * 1e3:.2f} ms over the first 100, "
            f"{statistics.median(costs[-100:]) * 1e3:.2f} ms over the last 100 "
            f"(mean {statistics.mean(costs[-100:]) * 1e3:.2f} ms, max {max(costs[-100:]) * 1e3:.1f} ms: fsync), "
            f"total {sum(costs):.1f} s"
        )
    assert len(ResultFile.load(tmp_path / "big.json").samples) == 2000
    assert statistics.median(costs[-100:]) < 0.1  # generous: a slow CI disk, not a budget


def test_enforcement_records_are_appended_atomically_and_old_files_load(tmp_path: Path) -> None:
    from harness.enforcement.model import Record

    result = filled(tmp_path / "r.json")
    assert result.enforcement == []
    record = Record(test="pids", platform="bare", verdict="pass", reason="r", requested=32.0,
                    measured=32.0, unit="tasks", series={"t_s": [0.0, 0.05], "cpu_ns": [0, 10]})  # fmt: skip
    result.add_enforcement(record.to_json())
    loaded = ResultFile.load(tmp_path / "r.json")
    assert loaded.enforcement == [record.to_json()]
    assert loaded.document()["isobench"]["schema_version"] == 2
    # A version-1 file (no enforcement key) still loads.
    doc = loaded.document()
    doc["isobench"]["schema_version"] = 1
    del doc["isobench"]["enforcement"]
    (tmp_path / "v1.json").write_text(json.dumps(doc))
    assert ResultFile.load(tmp_path / "v1.json").enforcement == []
    with pytest.raises(ValueError):
        result.add_enforcement({**record.to_json(), "measured": float("nan")})
    assert len(ResultFile.load(tmp_path / "r.json").enforcement) == 1
