"""The report: result files in, HTML / Markdown / CSV out, on synthetic runs with known ratios."""

from __future__ import annotations

import base64
import copy
import csv
import json
import math
import random
import re
from pathlib import Path
from typing import Any

import pytest

from harness.errors import UserError
from harness.report import (
    TCG_WARNING,
    analyse,
    build_report,
    load_results,
    ratio_text,
    summary_lines,
)
from harness.stats import Ratio

# What the synthetic runs are made of: overhead per platform (R > 1 costs more).
TRUE_RATIOS = {"bare": 1.0, "container": 1.00, "oci:runc": 1.02, "vm": 1.5}
STARTUP_RATIOS = {"bare": 1.0, "container": 3.0, "oci:runc": 6.0, "vm": 40.0}
STARTS_PER_BLOCK = 5
DIGEST = "sha256:" + "ab" * 32
BENCHMARKS: dict[str, dict[str, Any]] = {
    "cpu.sysbench": {
        "category": "cpu",
        "primary": "time_s",
        "metrics": [
            {"name": "time_s", "unit": "s", "higher_is_better": False},
            {"name": "events_per_s", "unit": "events/s", "higher_is_better": True},
        ],
        "sizes": {"events": 1000},
    },
    "memory.stream": {
        "category": "memory",
        "primary": "triad_mib_s",
        "metrics": [{"name": "triad_mib_s", "unit": "MiB/s", "higher_is_better": True}],
        "sizes": {},
    },
    "io.randread": {
        "category": "io",
        "primary": "iops",
        "metrics": [
            {"name": "iops", "unit": "IO/s", "higher_is_better": True},
            {"name": "clat_p50_us", "unit": "us", "higher_is_better": False},
            {"name": "clat_p99_us", "unit": "us", "higher_is_better": False},
        ],
        "sizes": {},
    },
    "startup.launch": {
        "category": "startup",
        "primary": "launch_s",
        "metrics": [{"name": "launch_s", "unit": "s", "higher_is_better": False}],
        "sizes": {},
    },
}


def _values(bench: str, ratio: float, scale: float) -> dict[str, float]:
    """Metric values of one sample for a platform costing `ratio` times bare, times a drift `scale`."""
    if bench == "cpu.sysbench":
        return {"time_s": 10.0 * ratio * scale, "events_per_s": 100.0 / (ratio * scale)}
    if bench == "memory.stream":
        return {"triad_mib_s": 8000.0 / (ratio * scale)}
    return {
        "iops": 20000.0 / (ratio * scale),
        "clat_p50_us": 50.0 * ratio * scale,
        "clat_p99_us": 180.0 * ratio * scale,
    }


def synth_run(
    *,
    blocks: int = 8,
    run_id: str = "run-1",
    seed: int = 7,
    governor: str = "performance",
    steal: dict[str, float] | None = None,
    noise: dict[tuple[str, str], float] | None = None,
    status: str = "complete",
    with_failure: bool = False,
) -> dict[str, Any]:
    """A result document: bare, container, oci:runc and a TCG vm over `blocks` randomised blocks.

    Per-block log noise is centred per (benchmark, platform), so the estimated
    ratio of every benchmark equals TRUE_RATIOS exactly: the test can demand that
    the interval contains it. `noise` adds extra uncentred relative noise.
    """
    rng = random.Random(seed)
    platforms = list(TRUE_RATIOS)
    samples: list[dict[str, Any]] = []

    def add(block: int, platform: str, bench: str, metrics: dict[str, float], **extra: Any) -> None:
        samples.append(
            {
                "block": block,
                "seq": len(samples),
                "platform": platform,
                "benchmark": bench,
                "warmup": extra.pop("warmup", False),
                "metrics": metrics,
                "wall_s": 1.0,
                "exit_code": extra.pop("exit_code", 0),
                "error": extra.pop("error", None),
                "confounders": {
                    "steal_pct": (steal or {}).get(platform, 0.1),
                    "load1": 0.5,
                    "cpu_pct": 99.0,
                },
                "resources": {},
                "time": "2026-11-28T01:00:00Z",
            }
        )

    for platform in platforms:  # the warm-up round: absurd values that must not count
        for bench in ("cpu.sysbench", "memory.stream", "io.randread"):
            add(0, platform, bench, _values(bench, 50.0, 1.0), warmup=True)
    for bench in ("cpu.sysbench", "memory.stream", "io.randread"):
        drift = [math.exp(rng.gauss(0, 0.02)) for _ in range(blocks)]  # shared by all platforms
        for platform in platforms:
            eps = [rng.gauss(0, 0.003) for _ in range(blocks)]
            centre = sum(eps) / blocks
            extra_sd = (noise or {}).get((bench, platform), 0.0)
            for block in range(blocks):
                scale = drift[block] * math.exp(eps[block] - centre) * (1 + rng.gauss(0, extra_sd))
                add(block, platform, bench, _values(bench, TRUE_RATIOS[platform], scale))
    for block in range(blocks):
        for platform in platforms:
            for _ in range(STARTS_PER_BLOCK):
                launch = 0.004 * STARTUP_RATIOS[platform] * math.exp(rng.gauss(0, 0.05))
                add(block, platform, "startup.launch", {"launch_s": launch})
    if with_failure:
        add(3, "container", "cpu.sysbench", {}, exit_code=1, error="sysbench: fatal: out of events")
        na = "NotApplicable: vm: no NIC in the guest for a host peer"
        add(3, "vm", "cpu.sysbench", {}, exit_code=-1, error=na)
    return {
        "machine_info": {"node": "testhost"},
        "commit_info": {"id": "0123abc"},
        "benchmarks": [],
        "datetime": "2026-11-28T01:00:00Z",
        "version": "5.1.0",
        "isobench": {
            "schema_version": 1,
            "run_id": run_id,
            "profile": "quick",
            "seed": seed,
            "blocks": blocks,
            "status": status,
            "started": "2026-11-28T01:00:00Z",
            "finished": "2026-11-28T01:09:00Z",
            "host": {
                "cpu_model": "Test CPU 3000",
                "cores": 2,
                "memory_bytes": 4 << 30,
                "kernel": "6.1.0-test",
                "cgroup_version": 1,
                "governor": governor,
                "turbo": True,
                "smt": False,
                "kvm_usable": False,
            },
            "image": {
                "ref": "isobench/workload:latest",
                "digest": DIGEST,
                "tools": {"fio": "3.33"},
            },
            "platforms": {
                "bare": {},
                "container": {},
                "oci:runc": {"version": "1.1.5"},
                "vm": {"accel": "tcg"},
            },
            "skipped": {"oci:crun": "crun refuses v1-hybrid cgroups"},
            "benchmarks": copy.deepcopy(BENCHMARKS),  # tests edit their own copy
            "samples": samples,
        },
    }


def write(tmp_path: Path, document: object, name: str = "run.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return path


@pytest.fixture
def run_file(tmp_path: Path) -> Path:
    return write(tmp_path, synth_run(with_failure=True))


# ---- ratios --------------------------------------------------------------------------------


@pytest.mark.parametrize("bench", ["cpu.sysbench", "memory.stream", "io.randread"])
def test_ratios_are_the_synthesised_ones_and_lie_in_their_intervals(
    run_file: Path, bench: str
) -> None:
    analysis = analyse(load_results([run_file])[0], include_tcg=True)
    for platform in ("container", "oci:runc", "vm"):
        row = analysis.row(bench, platform)
        assert row is not None and row.ratio is not None
        true = TRUE_RATIOS[platform]
        assert row.ratio.value == pytest.approx(true, rel=1e-9)
        assert row.ratio.low is not None and row.ratio.high is not None
        assert row.ratio.low < true < row.ratio.high, (platform, str(row.ratio))
        assert row.ratio.high - row.ratio.low < 0.01  # 0.3 % noise over 8 blocks: a tight interval


def test_throughput_is_inverted_so_that_above_one_costs_more(run_file: Path) -> None:
    analysis = analyse(load_results([run_file])[0])
    runc, bare = analysis.row("memory.stream", "oci:runc"), analysis.row("memory.stream", "bare")
    assert runc is not None and bare is not None and runc.ratio is not None
    assert runc.estimate.value < bare.estimate.value  # fewer MiB/s ...
    assert runc.ratio.value == pytest.approx(1.02)  # ... is an overhead above 1


def test_tcg_vm_is_excluded_from_ratios_by_default(run_file: Path) -> None:
    analysis = analyse(load_results([run_file])[0])
    vm = analysis.row("cpu.sysbench", "vm")
    assert vm is not None and vm.ratio is None and vm.note == "TCG: excluded"
    assert vm.estimate.value == pytest.approx(15.0, rel=0.05)  # the median is still shown
    assert f"vm: {TCG_WARNING}" in analysis.warnings
    included = analyse(load_results([run_file])[0], include_tcg=True).row("cpu.sysbench", "vm")
    assert included is not None and included.ratio is not None
    assert ratio_text(included).endswith("(TCG)")


def test_startup_ratio_of_p50s_covers_the_synthesised_one(run_file: Path) -> None:
    analysis = analyse(load_results([run_file])[0])
    for platform in ("container", "oci:runc"):
        row = analysis.row("startup.launch", platform)
        assert row is not None and row.ratio is not None and row.estimate.n == 8 * STARTS_PER_BLOCK
        assert isinstance(row.ratio, Ratio)  # startup: a ratio of p50s, not an OverheadRatio
        assert row.ratio.low < STARTUP_RATIOS[platform] < row.ratio.high, str(row.ratio)


def test_failed_and_warmup_samples_stay_out_of_the_figures(run_file: Path) -> None:
    analysis = analyse(load_results([run_file])[0])
    row = analysis.row("cpu.sysbench", "container")
    assert row is not None and row.estimate.n == 8  # not the warm-up, not the failed sample
    assert [s.error for s in analysis.failed] == ["sysbench: fatal: out of events"]


def test_not_applicable_samples_are_listed_apart_not_as_failures(
    run_file: Path, tmp_path: Path
) -> None:
    analysis = analyse(load_results([run_file])[0])
    assert analysis.not_applicable == (
        ("vm", "cpu.sysbench", "vm: no NIC in the guest for a host peer"),
    )
    assert not any(s.platform == "vm" for s in analysis.failed)
    text = build_report(load_results([run_file]), tmp_path / "out").markdown.read_text()
    assert "| vm | cpu.sysbench | vm: no NIC in the guest for a host peer |" in text


def test_one_block_gives_a_ratio_without_interval(tmp_path: Path) -> None:
    analysis = analyse(load_results([write(tmp_path, synth_run(blocks=1))])[0])
    row = analysis.row("cpu.sysbench", "oci:runc")
    assert row is not None and row.ratio is not None and row.ratio.low is None
    assert "no interval: 1 paired block" in ratio_text(row)


def test_two_blocks_with_spread_are_flagged_too_few(tmp_path: Path) -> None:
    doc = synth_run(blocks=2, noise={("cpu.sysbench", "oci:runc"): 0.05})
    analysis = analyse(load_results([write(tmp_path, doc)])[0])
    row = analysis.row("cpu.sysbench", "oci:runc")
    assert row is not None and "too few blocks" in ratio_text(row)
    assert any("too few blocks (2)" in w for w in analysis.warnings)


# ---- outputs -------------------------------------------------------------------------------


def test_html_is_one_self_contained_page_with_tables_and_plots(
    run_file: Path, tmp_path: Path
) -> None:
    results = load_results([run_file])
    paths = build_report(results, tmp_path / "out")
    page = paths.html.read_text()
    assert not re.search(r"https?://", page), "the page must not load anything"
    title = re.search(r"<title>(.*)</title>", page)
    assert title and "Test CPU 3000" in title[1] and "quick" in title[1] and DIGEST[:19] in title[1]
    assert "2026-11-28" in title[1]
    for platform in ("bare", "container", "oci:runc", "vm"):
        assert f"<td>{platform}</td>" in page
    analysis = analyse(results[0])
    for row in analysis.rows:
        if row.is_primary and row.ratio is not None:
            assert ratio_text(row) in page
    assert re.search(r"container/bare = 1\.000x \[0\.99\d, 1\.00\d\]", page)
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 5  # cpu, memory, io ratios; startup distribution; IO latency
    assert all(base64.b64decode(i).startswith(b"\x89PNG\r\n\x1a\n") for i in images)
    assert "p99 (ms)" in page and "ratio of p50s vs bare" in page
    assert "crun refuses v1-hybrid cgroups" in page
    assert "sysbench: fatal: out of events" in page
    assert "seed 7, 8 blocks, complete" in page


def test_markdown_summary_has_the_same_tables(run_file: Path, tmp_path: Path) -> None:
    results = load_results([run_file])
    text = build_report(results, tmp_path / "out").markdown.read_text()
    assert text.startswith("# isobench: Test CPU 3000, profile quick, 2026-11-28")
    assert (
        "| benchmark | metric | platform | median [95 % CI] | n | CV | overhead vs bare |" in text
    )
    assert "### startup" in text and "### cpu" in text and "### memory" in text
    row = analyse(results[0]).row("cpu.sysbench", "oci:runc")
    assert row is not None and f"| {ratio_text(row)} |" in text
    assert "base64" not in text


def test_csv_has_one_row_per_benchmark_platform_and_metric(run_file: Path, tmp_path: Path) -> None:
    paths = build_report(load_results([run_file]), tmp_path / "out")
    with paths.csv.open() as stream:
        rows = list(csv.DictReader(stream))
    metrics = sum(len(b["metrics"]) for b in BENCHMARKS.values())
    assert len(rows) == metrics * 4
    by_key = {(r["benchmark"], r["platform"], r["metric"]): r for r in rows}
    runc = by_key["cpu.sysbench", "oci:runc", "events_per_s"]
    assert float(runc["ratio"]) == pytest.approx(1.02)
    assert float(runc["ratio_low"]) < 1.02 < float(runc["ratio_high"])
    assert runc["n"] == "8" and runc["blocks"] == "8"
    assert float(runc["ci_low"]) <= float(runc["median"]) <= float(runc["ci_high"])
    assert by_key["cpu.sysbench", "bare", "time_s"]["ratio"] == ""
    assert by_key["cpu.sysbench", "vm", "time_s"]["note"] == "TCG: excluded"


def test_warnings_for_noise_steal_governor_and_tcg(tmp_path: Path) -> None:
    doc = synth_run(
        governor="powersave",
        steal={"container": 5.0},
        noise={("memory.stream", "oci:runc"): 0.10},
    )
    paths = build_report(load_results([write(tmp_path, doc)]), tmp_path / "out")
    for text in (paths.html.read_text(), paths.markdown.read_text()):
        assert "memory.stream on oci:runc: coefficient of variation of triad_mib_s" in text
        assert "container: mean CPU steal 5.0 %" in text
        assert (
            "CPU governor is &#x27;powersave&#x27;" in text or "CPU governor is 'powersave'" in text
        )
        assert TCG_WARNING in text
    clean = analyse(load_results([write(tmp_path, synth_run(), "clean.json")])[0])
    assert clean.warnings == (f"vm: {TCG_WARNING}",)


def test_an_interrupted_run_says_so_at_the_top(tmp_path: Path) -> None:
    doc = synth_run(blocks=5, status="interrupted")
    doc["isobench"]["blocks"] = 8
    page = build_report(load_results([write(tmp_path, doc)]), tmp_path / "out").html.read_text()
    banner = page.index("This run is interrupted, not complete: 5 of 8 planned blocks")
    assert banner < page.index("<table")


def test_io_latency_plot_is_skipped_with_a_note_without_clat_metrics(tmp_path: Path) -> None:
    doc = synth_run()
    io = doc["isobench"]["benchmarks"]["io.randread"]
    io["metrics"] = [m for m in io["metrics"] if m["name"] == "iops"]
    for sample in doc["isobench"]["samples"]:
        for name in ("clat_p50_us", "clat_p99_us"):
            sample["metrics"].pop(name, None)
    page = build_report(load_results([write(tmp_path, doc)]), tmp_path / "out").html.read_text()
    assert "IO latency plot skipped: no io benchmark reports clat_p50/clat_p99" in page
    assert page.count("data:image/png;base64,") == 4


def test_terminal_summary_fits_one_screen(run_file: Path) -> None:
    lines = summary_lines(load_results([run_file]))
    print("\n".join(lines))
    assert len(lines) <= 40
    assert "container" in lines[3] and "oci:runc" in lines[3] and "vm (TCG)" in lines[3]
    cpu = next(line for line in lines if line.startswith("cpu.sysbench"))
    assert re.search(r"1\.020 \[1\.0\d\d,1\.0\d\d\]", cpu) and "excluded (TCG)" in cpu
    assert any("skipped oci:crun" in line for line in lines)


# ---- several files -------------------------------------------------------------------------


def test_a_resumed_run_is_merged_without_duplicates(tmp_path: Path) -> None:
    whole = synth_run()
    samples = whole["isobench"]["samples"]
    first, second = copy.deepcopy(whole), copy.deepcopy(whole)
    first["isobench"]["samples"] = samples[: len(samples) // 2 + 10]  # killed mid-run ...
    first["isobench"]["status"] = "interrupted"
    second["isobench"]["samples"] = samples[len(samples) // 2 :]  # ... resumed, overlapping
    runs = load_results([write(tmp_path, first, "a.json"), write(tmp_path, second, "b.json")])
    assert len(runs) == 1 and runs[0].status == "complete"
    assert sorted(s.seq for s in runs[0].samples) == list(range(len(samples)))


def test_a_resumed_run_on_another_host_is_refused(tmp_path: Path) -> None:
    other = synth_run(governor="powersave")
    with pytest.raises(UserError, match="host fact governor differs"):
        load_results([write(tmp_path, synth_run(), "a.json"), write(tmp_path, other, "b.json")])


def test_different_runs_get_their_own_sections(tmp_path: Path) -> None:
    second = synth_run(run_id="run-2", seed=8)
    second["isobench"]["host"]["kernel"] = "6.12.0-other"
    files = [write(tmp_path, synth_run(), "a.json"), write(tmp_path, second, "b.json")]
    page = build_report(load_results(files), tmp_path / "out").html.read_text()
    assert page.count("<h2>") == 2 and "<h1>isobench: 2 runs</h1>" in page
    assert "different hosts (kernel: &#x27;6.1.0-test&#x27; vs &#x27;6.12.0-other&#x27;)" in page


# ---- bad input -----------------------------------------------------------------------------


def _corrupt(change: str) -> object:
    # A deep copy: synth_run's benchmark records are module-level objects other tests reuse.
    doc = copy.deepcopy(synth_run(blocks=2))
    section = doc["isobench"]
    if change == "list":
        return [doc]
    if change == "no-section":
        del doc["isobench"]
    elif change == "schema":
        section["schema_version"] = 99
    elif change == "enforcement":
        section["enforcement"] = [{"test": "pids", "platform": "bare", "verdict": "maybe"}]
    elif change == "status":
        section["status"] = "done"
    elif change == "samples":
        section["samples"] = {"0": {}}
    elif change == "block":
        del section["samples"][0]["block"]
    elif change == "benchmark":
        section["samples"][0]["benchmark"] = "cpu.unknown"
    elif change == "metric":
        section["samples"][0]["metrics"]["time_s"] = "fast"
    elif change == "primary":
        section["benchmarks"]["cpu.sysbench"]["primary"] = "nothing"
    return doc


@pytest.mark.parametrize(
    "change",
    [
        "list",
        "no-section",
        "schema",
        "enforcement",
        "status",
        "samples",
        "block",
        "benchmark",
        "metric",
        "primary",
    ],
)
def test_corrupt_result_files_are_one_line_user_errors(tmp_path: Path, change: str) -> None:
    path = write(tmp_path, _corrupt(change), "bad.json")
    with pytest.raises(UserError) as info:
        load_results([path])
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert info.value.exit_code == 2


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe", b""])
def test_unparseable_files_are_user_errors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.json"
    path.write_bytes(content)
    with pytest.raises(UserError, match=re.escape(str(path))):
        load_results([path])


def test_missing_file_and_no_file_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot read"):
        load_results([tmp_path / "absent.json"])
    with pytest.raises(UserError, match="no result files"):
        load_results([])


def test_changed_vm_workloads_and_a_recorded_include_tcg_reach_the_report(tmp_path: Path) -> None:
    doc = synth_run()
    doc["isobench"]["platforms"]["vm"].update(
        {"workload_changes": {"cpu.sysbench.1thread": "smoke sizes (TCG)"}, "include_tcg": True}
    )
    analysis = analyse(load_results([write(tmp_path, doc)])[0])
    assert any(
        "vm: ran changed workloads" in w and "smoke sizes (TCG)" in w for w in analysis.warnings
    )
    assert any("because of --include-tcg" in w for w in analysis.warnings)
