"""Pure parsers of benchmark tool output: text in, {metric name: value} out.

Each parser looks for the tool's own success marker first (sysbench's
"General statistics", stress-ng's "successful run completed", fio's job list with
error 0, iperf3's end summary) and raises ParseError, one line naming the tool
and what was missing, when it is absent: such a run could not measure anything.
Units are in the key names (_s, _us, _mib_s, _gbit_s).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from harness.errors import IsobenchError

MIB = 1024 * 1024


class ParseError(IsobenchError):
    """A tool's output lacks its success marker or a value: the run could not measure (exit 3)."""

    exit_code = 3


def select(values: dict[str, float], names: Iterable[str], tool: str) -> dict[str, float]:
    """Exactly the named values (a workload's declared metrics); ParseError names a missing one."""
    missing = [name for name in names if name not in values]
    if missing:
        raise ParseError(f"{tool} output gave no {', '.join(missing)}")
    return {name: values[name] for name in names}


# ---------------------------------------------------------------- sysbench

_SB_GENERAL = "General statistics:"
_SB_TOTAL_TIME = re.compile(r"^\s*total time:\s+([0-9.]+)s\s*$", re.M)
_SB_EVENTS = re.compile(r"^\s*total number of events:\s+(\d+)\s*$", re.M)
_SB_LATENCY_SUM = re.compile(r"^\s*sum:\s+([0-9.]+)\s*$", re.M)
_SB_EVENTS_PER_S = re.compile(r"^\s*events per second:\s+([0-9.]+)\s*$", re.M)
_SB_MEMORY_OPS = re.compile(r"^Total operations: (\d+) \(\s*([0-9.]+) per second\)\s*$", re.M)
_SB_MEMORY_MIB = re.compile(r"^([0-9.]+) MiB transferred \(([0-9.]+) MiB/sec\)\s*$", re.M)


def _sysbench_failure(text: str) -> str:
    fatal = [line.strip() for line in text.splitlines() if line.startswith("FATAL:")]
    return f" (sysbench said: {fatal[0]!r})" if fatal else ""


def _search(pattern: re.Pattern[str], text: str, tool: str, what: str) -> re.Match[str]:
    match = pattern.search(text)
    if match is None:
        raise ParseError(f"{tool} output has no {what}")
    return match


def parse_sysbench_general(text: str) -> dict[str, float]:
    """The "General statistics" every sysbench test prints: total time, events, latency sum."""
    if _SB_GENERAL not in text:
        raise ParseError(f"sysbench output has no {_SB_GENERAL!r} section{_sysbench_failure(text)}")
    general = text[text.index(_SB_GENERAL) :]
    return {
        "total_time_s": float(_search(_SB_TOTAL_TIME, general, "sysbench", "total time")[1]),
        "events": float(_search(_SB_EVENTS, general, "sysbench", "total number of events")[1]),
        "latency_sum_ms": float(_search(_SB_LATENCY_SUM, general, "sysbench", "latency sum")[1]),
    }


def parse_sysbench_cpu(text: str) -> dict[str, float]:
    """sysbench cpu run: events per second, total time and events."""
    general = parse_sysbench_general(text)
    rate = _search(_SB_EVENTS_PER_S, text, "sysbench cpu", "'events per second' line")
    return {
        "events_per_s": float(rate[1]),
        "total_time_s": general["total_time_s"],
        "events": general["events"],
    }


def parse_sysbench_memory(text: str) -> dict[str, float]:
    """sysbench memory run: MiB/s transferred, total operations, operations per second."""
    general = parse_sysbench_general(text)
    ops = _search(_SB_MEMORY_OPS, text, "sysbench memory", "'Total operations' line")
    mib = _search(_SB_MEMORY_MIB, text, "sysbench memory", "'MiB transferred' line")
    return {
        "mib_per_s": float(mib[2]),
        "transferred_mib": float(mib[1]),
        "operations": float(ops[1]),
        "ops_per_s": float(ops[2]),
        "total_time_s": general["total_time_s"],
    }


# ---------------------------------------------------------------- stress-ng

# Without --log-brief every line starts "stress-ng: metrc: [1234] "; with it, nothing.
_SNG_PREFIX = re.compile(r"^stress-ng: \w+: +\[\d+\] ")
_SNG_SUCCESS = "successful run completed"
_SNG_PREMATURE = "WARNING: finished prematurely"
_NUMBER = r"([0-9]+(?:\.[0-9]+)?)"
# stressor, bogo ops, real, usr, sys, bogo ops/s (real), bogo ops/s (usr+sys); --metrics adds columns.
_SNG_ROW = re.compile(r"^(\S+) +(\d+) +" + " +".join([_NUMBER] * 5) + r"(?: +\S+)*\s*$")
# "pipe   658.19 MB per sec pipe write rate (geometic mean of 1 instances)" [sic]
_SNG_MISC = re.compile(r"^(\S+) +" + _NUMBER + r" +(.+?) \(\w+ mean of \d+ instances\)\s*$")
_SNG_FAILURE = re.compile(
    r"(failed|unrecognized|unknown|not supported|skipped|No stress workers|unsuccessful)", re.I
)


def _slug(description: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", description.lower()).strip("_")


def parse_stress_ng(text: str, stressor: str) -> dict[str, float]:
    """stress-ng --metrics-brief (--stdout, optionally --log-brief): one stressor's row.

    Returns bogo_ops, real_time_s, usr_time_s, sys_time_s, bogo_ops_per_s_real,
    bogo_ops_per_s_usr_sys, and each "miscellaneous metric" of that stressor under
    its description turned into a key (e.g. memory_read_rate_mb_per_sec).
    """
    lines = [_SNG_PREFIX.sub("", line) for line in text.splitlines()]
    said = [line.strip() for line in lines if _SNG_FAILURE.search(line)]
    detail = f" (stress-ng said: {said[0]!r})" if said else ""
    if not any(line.startswith(_SNG_SUCCESS) for line in lines):
        raise ParseError(f"stress-ng output has no {_SNG_SUCCESS!r} line{detail}")
    # stress-ng still says "successful" when an instance stopped short of its bogo-ops
    # without an error exit (a connect() that failed): its own warning is the marker.
    if any(line.startswith(f"{stressor}: {_SNG_PREMATURE}") for line in lines):
        raise ParseError(f"stress-ng {stressor} {_SNG_PREMATURE.lower()}{detail}")
    metrics: dict[str, float] = {}
    for line in lines:
        row = _SNG_ROW.match(line)
        if row and row[1] == stressor and "bogo_ops" not in metrics:
            names = ("bogo_ops", "real_time_s", "usr_time_s", "sys_time_s")
            values = [float(v) for v in row.groups()[1:]]
            metrics.update(zip(names, values[:4], strict=True))
            metrics["bogo_ops_per_s_real"] = values[4]
            metrics["bogo_ops_per_s_usr_sys"] = values[5]
            continue
        misc = _SNG_MISC.match(line)
        if misc and misc[1] == stressor:
            metrics[_slug(misc[3])] = float(misc[2])
    if "bogo_ops" not in metrics:
        raise ParseError(f"stress-ng output has no metrics row for stressor {stressor!r}")
    return metrics


# ---------------------------------------------------------------- fio

_FIO_DIRECTIONS = ("read", "write")


def _json_document(text: str, tool: str) -> dict[str, Any]:
    """The JSON object in text; fio may print "fio: ..." error lines before it."""
    start = re.search(r"^\{", text, re.M)
    if start is None:
        raise ParseError(f"{tool} output has no JSON document")
    try:
        document, _ = json.JSONDecoder().raw_decode(text, start.start())
    except json.JSONDecodeError as exc:
        raise ParseError(
            f"{tool} output is not complete JSON: {exc.msg} at char {exc.pos}"
        ) from None
    if not isinstance(document, dict):
        raise ParseError(f"{tool} output's JSON is not an object")
    return document


def _number(mapping: Any, key: str, tool: str, where: str) -> float:
    value = mapping.get(key) if isinstance(mapping, dict) else None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ParseError(f"{tool} output has no number {key!r} in {where}")
    return float(value)


def parse_fio_json(text: str) -> dict[str, float]:
    """fio --output-format=json: per direction with IO, bandwidth, IOPS, clat p50/p99, runtime.

    Keys are read_* and write_* (only directions that moved bytes). Over several jobs
    bandwidth and IOPS add up, runtime is the longest and percentiles are the worst
    job's (fio --group_reporting merges them exactly instead).
    """
    document = _json_document(text, "fio")
    jobs = document.get("jobs")
    if not isinstance(jobs, list) or not jobs:
        raise ParseError("fio output has no 'jobs' list")
    for job in jobs:
        error = job.get("error") if isinstance(job, dict) else None
        if error != 0:
            name = job.get("jobname", "?") if isinstance(job, dict) else "?"
            raise ParseError(f"fio job {name!r} ended with error {error!r} (an errno)")
    metrics: dict[str, float] = {}
    for direction in _FIO_DIRECTIONS:
        sides = [job.get(direction) for job in jobs]
        moved = [s for s in sides if isinstance(s, dict) and s.get("io_bytes", 0) > 0]
        if not moved:
            continue
        where = f"the {direction} section"
        percentiles = [s.get("clat_ns", {}).get("percentile") for s in moved]
        metrics[f"{direction}_bw_mib_s"] = sum(_number(s, "bw", "fio", where) for s in moved) / 1024
        metrics[f"{direction}_iops"] = sum(_number(s, "iops", "fio", where) for s in moved)
        metrics[f"{direction}_runtime_s"] = (
            max(_number(s, "runtime", "fio", where) for s in moved) / 1e3
        )
        for name, key in (("p50", "50.000000"), ("p99", "99.000000")):
            worst = max(
                _number(p, key, "fio", f"{direction} clat percentiles") for p in percentiles
            )
            metrics[f"{direction}_clat_{name}_us"] = worst / 1e3
    if not metrics:
        raise ParseError("fio output has no job that read or wrote any bytes")
    return metrics


# ---------------------------------------------------------------- iperf3


def parse_iperf3_json(text: str) -> dict[str, float]:
    """iperf3 -J client: received throughput (Gbit/s and MiB/s), bytes, seconds, retransmits."""
    document = _json_document(text, "iperf3")
    if document.get("error"):
        raise ParseError(f"iperf3 reported an error: {document['error']}")
    end = document.get("end")
    received = end.get("sum_received") if isinstance(end, dict) else None
    if not isinstance(received, dict):
        raise ParseError("iperf3 output has no end.sum_received summary")
    bits_per_s = _number(received, "bits_per_second", "iperf3", "end.sum_received")
    sent = end.get("sum_sent") if isinstance(end, dict) else None
    return {
        "received_gbit_s": bits_per_s / 1e9,
        "received_mib_s": bits_per_s / 8 / MIB,
        "received_bytes": _number(received, "bytes", "iperf3", "end.sum_received"),
        "seconds": _number(received, "seconds", "iperf3", "end.sum_received"),
        "retransmits": _number(sent, "retransmits", "iperf3", "end.sum_sent"),
    }
