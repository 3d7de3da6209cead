"""Benchmarks: command lines per benchmark and pure parsers of tool output."""

from harness.workloads.base import CATEGORIES, PROFILES, Metric, Workload
from harness.workloads.catalog import BENCHMARKS, bind_scratch, workloads
from harness.workloads.parsers import ParseError

__all__ = [
    "BENCHMARKS",
    "CATEGORIES",
    "PROFILES",
    "Metric",
    "ParseError",
    "Workload",
    "bind_scratch",
    "workloads",
]
