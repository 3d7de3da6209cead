"""The report's Enforcement section from records with series: table, records, plots, summary."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from harness.enforcement.model import Record
from harness.report import build_report, load_results, summary_lines
from harness.report import enforcement as section
from tests.unit.test_report import synth_run, write


def records() -> list[dict[str, object]]:
    t = [i * 0.05 for i in range(60)]
    quota = [int(i * 0.05 * 0.5e9) for i in range(60)]  # half a CPU
    memory = [min(64 << 20, i << 22) for i in range(60)]
    return [
        Record("cpu.quota.0.5", "bare", "pass", "ok", 0.5, 0.5, "CPUs", 5.0,
               {"cpu.cfs_quota_us": "50000"}, series={"t_s": t, "cpu_ns": quota, "memory_bytes": memory}).to_json(),
        Record("cpu.quota.0.5", "container", "fail", "too much", 0.5, 1.0, "CPUs", 5.0,
               series={"t_s": t, "cpu_ns": [2 * q for q in quota], "memory_bytes": memory}).to_json(),
        Record("memory.hard_limit", "bare", "pass", "killed", 64.0, 64.0, "MiB peak", 0.0,
               series={"t_s": t, "cpu_ns": quota, "memory_bytes": memory}).to_json(),
        Record("memory.high", "bare", "not applicable", "cgroup v1 has no memory.high").to_json(),
    ]  # fmt: skip


def test_cpu_rate_turns_the_counter_into_cpus() -> None:
    times, rates = section.cpu_rate({"t_s": [0, 0.1, 0.2], "cpu_ns": [0, 5e7, 1e8]})
    assert times == [0.1, 0.2] and rates == [0.5, 0.5]
    # Smoothed over the window: a counter that alternates fast and slow steps reads its mean.
    t = [i * 0.05 for i in range(40)]
    ns = [sum(0.09e9 if k % 2 else 0.01e9 for k in range(i)) for i in range(40)]
    _, rates = section.cpu_rate({"t_s": t, "cpu_ns": ns}, window_s=0.5)
    assert rates[-1] == pytest.approx(1.0)


def test_matrix_has_a_cell_per_test_and_platform() -> None:
    header, rows = section.matrix(records())
    assert header == ("test", "bare", "container")
    assert rows[0] == ("cpu.quota.0.5", "pass 0.5 / 0.5 CPUs", "fail 1 / 0.5 CPUs")
    assert rows[2] == ("memory.high", "not applicable", "")


def test_report_has_the_enforcement_section_and_plots(tmp_path: Path) -> None:
    doc = copy.deepcopy(synth_run(blocks=2))  # synth_run may hand out a shared document
    doc["isobench"]["schema_version"] = 2
    doc["isobench"]["enforcement"] = records()
    path = write(tmp_path, doc, "run.json")
    runs = load_results([path])
    paths = build_report(runs, tmp_path / "out")
    page = paths.html.read_text()
    assert "<h3>Enforcement</h3>" in page and "cpu.cfs_quota_us=50000" in page
    assert page.count('alt="cpu.quota.0.5: CPU used against the quota') == 1
    assert page.count('alt="memory.hard_limit: memory against the limit') == 1
    md = paths.markdown.read_text()
    assert "| cpu.quota.0.5 | pass 0.5 / 0.5 CPUs | fail 1 / 0.5 CPUs |" in md
    summary = "\n".join(summary_lines(runs))
    assert "enforcement: 1 fail, 1 not applicable, 2 pass" in summary
    assert "FAIL cpu.quota.0.5 on container: too much" in summary
