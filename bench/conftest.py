"""Shared pieces of the benchmark suites: a summary section printed at the end of the run."""

from __future__ import annotations

import pytest

SUMMARY: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print what the suites put in SUMMARY, after pytest-benchmark's own tables."""
    if SUMMARY:
        terminalreporter.section("isobench summary")
        for line in SUMMARY:
            terminalreporter.write_line(line)
