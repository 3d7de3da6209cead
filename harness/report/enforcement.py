"""The report's Enforcement section: the platform x test table, every record, and the time-series plots.

Plots: CPU used (CPUs, from the sampled cgroup counter) against the quota for
each CPU quota test, and memory against the limit for the hard-limit test,
one line per platform, over time.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from harness.plots import colour

Record = dict[str, Any]
MIB = 1 << 20


def _num(value: object) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def matrix(records: Sequence[Record]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """(header, rows) of the platform x test table; a cell is the verdict and measured/requested."""
    platforms = list(dict.fromkeys(str(r["platform"]) for r in records))
    tests = list(dict.fromkeys(str(r["test"]) for r in records))
    cells = {(r["test"], r["platform"]): r for r in records}
    rows = []
    for test in tests:
        row = [test]
        for platform in platforms:
            r = cells.get((test, platform))
            if r is None:
                row.append("")
                continue
            text = str(r["verdict"])
            if r.get("measured") is not None:
                text += f" {_num(r['measured'])} / {_num(r.get('requested'))} {r.get('unit', '')}"
            row.append(text.strip())
        rows.append(tuple(row))
    return ("test", *platforms), rows


def details(records: Sequence[Record]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """(header, rows): every record with requested and effective limits side by side."""
    header: tuple[str, ...] = ("test", "platform", "requested", "effective (cgroup files)", "measured", "unit",
              "tolerance %", "verdict", "reason", "setup")  # fmt: skip
    rows: list[tuple[str, ...]] = [
        (
            str(r["test"]),
            str(r["platform"]),
            _num(r.get("requested")),
            "; ".join(f"{k}={v}" for k, v in (r.get("effective") or {}).items()),
            _num(r.get("measured")),
            str(r.get("unit", "")),
            _num(r.get("tolerance_pct")),
            str(r["verdict"]),
            str(r["reason"]),
            str(r.get("setup", "")),
        )
        for r in records
    ]
    return header, rows


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


SMOOTH_S = 0.5  # several CFS periods: a 20 Hz sampling of a 100 ms period otherwise aliases


def cpu_rate(
    series: dict[str, list[Any]], window_s: float = SMOOTH_S
) -> tuple[list[float], list[float]]:
    """(times, CPUs used) from the cgroup's CPU counter, each over the window_s before that sample."""
    pairs = [(t, ns) for t, ns in zip(series.get("t_s", []), series.get("cpu_ns", []), strict=False) if ns is not None]  # fmt: skip
    times, rates = [], []
    start = 0
    for i in range(1, len(pairs)):
        while start < i - 1 and pairs[i][0] - pairs[start + 1][0] >= window_s:
            start += 1
        dt = pairs[i][0] - pairs[start][0]
        if dt > 0:
            times.append(pairs[i][0])
            rates.append((pairs[i][1] - pairs[start][1]) / 1e9 / dt)
    return times, rates


def quota_plot(test: str, records: Sequence[Record]) -> bytes:
    """CPU used over time by each platform's cgroup, and the quota as a dashed line."""
    fig = Figure(figsize=(8, 3.2))
    ax = fig.add_subplot()
    order = [str(r["platform"]) for r in records]
    for r in records:
        times, rates = cpu_rate(r["series"])
        ax.plot(times, rates, label=r["platform"], color=colour(str(r["platform"]), order), lw=1)
    quota = records[0].get("requested")
    if quota is not None:
        ax.axhline(float(quota), color="black", ls="--", lw=1, label=f"quota {quota:g} CPUs")
    ax.set(
        title=f"{test}: CPU used vs quota ({SMOOTH_S:g} s windows)",
        xlabel="s since launch",
        ylabel="CPUs",
    )
    ax.legend(fontsize="small")
    return _png(fig)


def memory_plot(test: str, records: Sequence[Record], limit_mib: float | None) -> bytes:
    """Memory charged to each platform's cgroup over time, and the limit as a dashed line."""
    fig = Figure(figsize=(8, 3.2))
    ax = fig.add_subplot()
    order = [str(r["platform"]) for r in records]
    for r in records:
        t, mem = r["series"].get("t_s", []), r["series"].get("memory_bytes", [])
        pairs = [(a, b / MIB) for a, b in zip(t, mem, strict=False) if b is not None]
        line_colour = colour(str(r["platform"]), order)
        ax.plot([p[0] for p in pairs], [p[1] for p in pairs], label=r["platform"], color=line_colour, lw=1)  # fmt: skip
        peak = r["series"].get("memory_peak_bytes", [])
        peaks = [(a, b / MIB) for a, b in zip(t, peak, strict=False) if b is not None]
        if peaks:  # an OOM kill is quicker than a sample: the kernel's own peak shows it
            ax.plot([p[0] for p in peaks], [p[1] for p in peaks], color=line_colour, lw=1, ls=":",
                    label=f"{r['platform']} peak")  # fmt: skip
    if limit_mib is not None:
        ax.axhline(limit_mib, color="black", ls="--", lw=1, label=f"limit {limit_mib:g} MiB")
    ax.set(title=f"{test}: memory vs limit", xlabel="s since launch", ylabel="MiB")
    ax.legend(fontsize="small")
    return _png(fig)


def figures(records: Sequence[Record]) -> list[tuple[str, bytes]]:
    """(alt text, PNG) for each CPU quota test and the memory tests that have series."""
    out: list[tuple[str, bytes]] = []
    by_test: dict[str, list[Record]] = {}
    for r in records:
        if r.get("series", {}).get("t_s"):
            by_test.setdefault(str(r["test"]), []).append(r)
    for test, group in by_test.items():
        if test.startswith("cpu.quota."):
            out.append((f"{test}: CPU used against the quota over time", quota_plot(test, group)))
        elif test == "memory.hard_limit":
            limit = group[0].get("requested")
            out.append((f"{test}: memory against the limit over time",
                        memory_plot(test, group, float(limit) if limit is not None else None)))  # fmt: skip
        elif test in ("memory.accounting", "memory.high"):
            out.append((f"{test}: memory over time", memory_plot(test, group, None)))
    return out
