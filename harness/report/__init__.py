"""`isobench report`: result files -> a self-contained HTML page, a Markdown summary and a CSV.

Several result files: files with the same run_id are one run resumed, and their
samples are merged (a sample present in both counts once); they must agree on
the host facts. Different runs are reported each in its own section of the same
page and never compared with one another: every ratio is computed within one
run, between platforms measured in the same blocks. When the runs' host facts
differ, the page says which.

The steps, a module each: load (read, validate, merge result files) -> analysis
(RunAnalysis: rows, ratios, warnings) -> render (HTML, Markdown, CSV, summary lines).
"""

from harness.report.analysis import TCG_WARNING, Row, RunAnalysis, analyse
from harness.report.load import (
    BenchmarkInfo,
    MetricInfo,
    RunResult,
    Sample,
    host_differences,
    load_results,
)
from harness.report.render import ReportPaths, build_report, ratio_text, summary_lines

__all__ = [
    "TCG_WARNING",
    "BenchmarkInfo",
    "MetricInfo",
    "ReportPaths",
    "Row",
    "RunAnalysis",
    "RunResult",
    "Sample",
    "analyse",
    "build_report",
    "host_differences",
    "load_results",
    "ratio_text",
    "summary_lines",
]
