"""Rendering: the HTML page, the Markdown summary, the CSV and the terminal summary lines."""

from __future__ import annotations

import base64
import collections
import csv
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness import plots
from harness.report.analysis import BASELINE, Row, RunAnalysis, _category_rank, analyse
from harness.report.load import HOST_FACTS, RunResult, host_differences
from harness.stats import OverheadRatio, percentile

METHOD = (
    "Overhead R = time(P) / time(bare), or rate(bare) / rate(P) for throughput, so R > 1 costs more: "
    "the geometric mean of the per-block ratios over the blocks that ran both platforms. "
    "[low, high]: 95 % percentile bootstrap over blocks (10,000 resamples), cross-checked by the "
    "t-interval on the per-block log-ratios (t quantile: Hill 1970); 'too few blocks' when the two "
    "disagree. Medians: 95 % bootstrap over samples. Startup: p50/p90/p99 of cold starts, the ratio "
    "of p50s with a bootstrap over blocks."
)


@dataclass(frozen=True)
class ReportPaths:
    """What build_report wrote."""

    html: Path
    markdown: Path
    csv: Path


@dataclass(frozen=True)
class Table:
    """A titled table of text cells, rendered to HTML and Markdown alike."""

    title: str
    header: tuple[str, ...]
    rows: Sequence[tuple[str, ...]]


@dataclass(frozen=True)
class Image:
    """An embedded plot (HTML only; the Markdown names it and points at the HTML page)."""

    alt: str
    png: bytes


@dataclass(frozen=True)
class Text:
    """A paragraph; a warning is shown as a banner."""

    text: str
    warning: bool = False


Part = Table | Image | Text


def ratio_text(row: Row) -> str:
    """`container/bare = 1.004x [0.998, 1.011]`, or why there is no ratio."""
    if row.ratio is None:
        return row.note
    text = f"{row.platform}/bare = {row.ratio}"
    if isinstance(row.ratio, OverheadRatio) and row.ratio.disagree:
        text += " (too few blocks)"
    return text + (" (TCG)" if row.tcg else "")


def _title(run: RunResult) -> str:
    host = run.host.get("cpu_model", "unknown host")
    date = (run.started or "no date")[:10]
    digest = str(run.image.get("digest") or "no image digest")[:19]
    return f"isobench: {host}, profile {run.profile}, {date}, image {digest}"


def _benchmark_table(category: str, rows: list[Row]) -> Table:
    header = ("benchmark", "metric", "platform", "median [95 % CI]", "n", "CV", "overhead vs bare")
    cells = [
        (
            r.benchmark.name,
            f"{r.metric.name} ({r.metric.unit})",
            r.platform,
            str(r.estimate),
            str(r.estimate.n),
            "-" if math.isnan(r.cv) else f"{r.cv:.1%}",
            ratio_text(r),
        )
        for r in rows
    ]
    return Table(category, header, cells)


def _startup_table(rows: list[Row]) -> Table:
    unit, scale = rows[0].metric.unit, 1.0
    if unit == "s" and max(max(r.values) for r in rows) < 1.0:
        unit, scale = "ms", 1000.0  # cold starts read better in milliseconds
    header = ("benchmark", "platform", "n", *(f"p{q} ({unit})" for q in (50, 90, 99)))
    cells = [
        (
            r.benchmark.name if r.is_primary else f"{r.benchmark.name} ({r.metric.name})",
            r.platform,
            str(r.estimate.n),
            *(f"{percentile(r.values, q) * scale:.4g}" for q in (50, 90, 99)),
            ratio_text(r),
        )
        for r in rows
    ]
    return Table("startup", (*header, "ratio of p50s vs bare"), cells)


def _facts(a: RunAnalysis) -> Table:
    run = a.run
    tools = run.image.get("tools")
    facts = [
        ("run", run.run_id),
        ("status", run.status),
        ("seed", str(run.seed)),
        ("blocks", f"{a.blocks_done} with samples, {run.blocks} planned"),
        ("started", str(run.started)),
        ("finished", str(run.finished)),
        ("commit", str(run.commit)),
        ("image", f"{run.image.get('ref')} {run.image.get('digest')}"),
        (
            "tools",
            ", ".join(f"{k} {v}" for k, v in tools.items()) if isinstance(tools, dict) else "",
        ),
        *((fact, str(run.host.get(fact))) for fact in (*HOST_FACTS, "kvm_usable")),
        ("files", ", ".join(str(p) for p in run.paths)),
    ]
    return Table("Run", ("fact", "value"), facts)


def _parts(a: RunAnalysis) -> list[Part]:
    """One run's section: banner, facts line, warnings, tables with their plots, failures."""
    run, parts = a.run, list[Part]()
    if run.status != "complete":
        parts.append(
            Text(
                f"This run is {run.status}, not complete: {a.blocks_done} of {run.blocks} "
                "planned blocks have samples, and the figures cover only those.",
                warning=True,
            )
        )
    parts.append(Text(f"Run {run.run_id}: seed {run.seed}, {a.blocks_done} blocks, {run.status}."))
    parts.extend(Text(w, warning=True) for w in a.warnings)
    for category in sorted({r.benchmark.category for r in a.rows}, key=_category_rank):
        rows = a.primary_rows(category)
        if category == "startup":
            # A burst's per-launch time is as telling as its total: both get rows.
            per_launch = [
                r
                for r in a.rows
                if r.benchmark.category == category and r.metric.name == "per_launch_p50_s"
            ]
            parts.append(_startup_table(rows + per_launch))
        else:
            parts.append(_benchmark_table(category, rows))
        parts.extend(Image(alt, png) for alt, png in plots.category_figures(a, category))
    if a.rows:
        latency = plots.io_latency_figure(a)
        parts.append(Text(latency) if isinstance(latency, str) else Image(*latency))
    parts.extend(_enforcement_parts(run))
    if run.skipped:
        parts.append(
            Table("Skipped platforms", ("platform", "reason"), sorted(run.skipped.items()))
        )
    if a.not_applicable:
        parts.append(
            Table("Not applicable", ("platform", "benchmark", "why"), list(a.not_applicable))
        )
    if a.failed:
        header = ("block", "platform", "benchmark", "exit code", "error")
        failed = [
            (str(s.block), s.platform, s.benchmark, str(s.exit_code), s.error or "")
            for s in a.failed
        ]
        parts.append(Table("Failed samples", header, failed))
    parts.append(_facts(a))
    return parts


def _enforcement_parts(run: RunResult) -> list[Part]:
    """The Enforcement section (enforce runs only): platform x test table, records, plots."""
    from harness.report import enforcement

    if not run.enforcement:
        return []
    records = list(run.enforcement)
    failed = sum(1 for r in records if r["verdict"] == "fail")
    parts: list[Part] = [
        Text(
            f"Enforcement: {len(records)} records, {failed} failed. Tolerances are percent of the "
            "requested value (MEASUREMENT.md); effective limits are the cgroup files as the kernel held them.",
            warning=bool(failed),
        )
    ]
    header, rows = enforcement.matrix(records)
    parts.append(Table("Enforcement", header, rows))
    parts.extend(Image(alt, png) for alt, png in enforcement.figures(records))
    header, rows = enforcement.details(records)
    parts.append(Table("Enforcement records: requested, effective, measured", header, rows))
    return parts


CSS = """body{font-family:sans-serif;margin:2em;max-width:80em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}th{background:#eee}
.warn{background:#fff3cd;border-left:4px solid #e0a800;padding:.3em .8em;margin:.3em 0}
img{max-width:100%;display:block;margin:.5em 0 1.5em}"""


def _html(part: Part) -> str:
    esc = html.escape
    if isinstance(part, Table):
        head = "".join(f"<th>{esc(h)}</th>" for h in part.header)
        body = "\n".join(
            "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in part.rows
        )
        return f"<h3>{esc(part.title)}</h3>\n<table><thead><tr>{head}</tr></thead>\n<tbody>{body}</tbody></table>"
    if isinstance(part, Image):
        data = base64.b64encode(part.png).decode("ascii")
        return f'<img alt="{esc(part.alt)}" src="data:image/png;base64,{data}">'
    return f'<p class="warn">{esc(part.text)}</p>' if part.warning else f"<p>{esc(part.text)}</p>"


def _md_line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _markdown(part: Part) -> str:
    if isinstance(part, Table):
        rows = [_md_line(part.header), _md_line(["---"] * len(part.header))]
        return f"### {part.title}\n\n" + "\n".join([*rows, *map(_md_line, part.rows)])
    if isinstance(part, Image):
        return f"*Plot: {part.alt} (in report.html)*"
    return f"> **Warning:** {part.text}" if part.warning else part.text


CSV_COLUMNS = (
    "run_id", "category", "benchmark", "platform", "metric", "unit", "higher_is_better", "n",
    "median", "ci_low", "ci_high", "ratio", "ratio_low", "ratio_high", "blocks", "note",
)  # fmt: skip


def _csv_row(run: RunResult, r: Row) -> dict[str, object]:
    ratio = r.ratio
    blocks = ratio.blocks if isinstance(ratio, OverheadRatio) else len(r.values_by_block)
    return {
        "run_id": run.run_id,
        "category": r.benchmark.category,
        "benchmark": r.benchmark.name,
        "platform": r.platform,
        "metric": r.metric.name,
        "unit": r.metric.unit,
        "higher_is_better": r.metric.higher_is_better,
        "n": r.estimate.n,
        "median": r.estimate.value,
        "ci_low": r.estimate.low,
        "ci_high": r.estimate.high,
        "ratio": ratio.value if ratio else None,
        "ratio_low": ratio.low if ratio else None,
        "ratio_high": ratio.high if ratio else None,
        "blocks": blocks,
        "note": r.note if not r.tcg or r.note.startswith("TCG") else f"TCG; {r.note}".rstrip("; "),
    }


def build_report(
    results: Sequence[RunResult], out_dir: Path, include_tcg: bool = False
) -> ReportPaths:
    """Write report.html, summary.md and results.csv for the runs into out_dir (one section a run)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    analyses = [analyse(run, include_tcg) for run in results]
    title = _title(results[0]) if len(results) == 1 else f"isobench: {len(results)} runs"
    preface: list[Part] = []
    differences = host_differences(results)
    if differences:
        preface.append(
            Text(
                f"These runs come from different hosts ({'; '.join(differences)}): each is "
                "reported on its own; do not compare their figures.",
                warning=True,
            )
        )
    # One run: its title is the page's. Several: a section a run, each under its own title.
    sections = [(_title(a.run) if len(analyses) > 1 else "", _parts(a)) for a in analyses]
    method = Text(f"How to read: {METHOD}")

    body = [f"<h1>{html.escape(title)}</h1>", *map(_html, preface)]
    for heading, parts in sections:
        body += [f"<h2>{html.escape(heading)}</h2>"] if heading else []
        body += map(_html, parts)
    body.append(_html(method))
    paths = ReportPaths(out_dir / "report.html", out_dir / "summary.md", out_dir / "results.csv")
    paths.html.write_text(
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n",
        encoding="utf-8",
    )

    markdown = [f"# {title}", *map(_markdown, preface)]
    for heading, parts in sections:
        markdown += [f"## {heading}"] if heading else []
        markdown += map(_markdown, parts)
    markdown.append(_markdown(method))
    paths.markdown.write_text("\n\n".join(markdown) + "\n", encoding="utf-8")

    with paths.csv.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for a in analyses:
            writer.writerows(_csv_row(a.run, r) for r in a.rows)
    return paths


SUMMARY_MAX_LINES = 40
WARNINGS_SHOWN = 6


def summary_lines(results: Sequence[RunResult], include_tcg: bool = False) -> list[str]:
    """Plain text for a terminal (at most 40 lines): ratios of the primary metrics, warnings."""
    lines: list[str] = []
    for run in results:
        a = analyse(run, include_tcg)
        others = [p for p in a.platforms if p != BASELINE]
        status = run.status if run.status == "complete" else run.status.upper()
        digest = str(run.image.get("digest"))[:19]
        lines += [
            f"{run.run_id}: profile {run.profile}, {a.blocks_done}/{run.blocks} blocks, "
            f"seed {run.seed}, {status}",
            f"host {run.host.get('cpu_model')}, governor {run.host.get('governor')}, image {digest}",
        ]
        if run.enforcement:
            counts = collections.Counter(str(r["verdict"]) for r in run.enforcement)
            lines.append("enforcement: " + ", ".join(f"{n} {v}" for v, n in sorted(counts.items())))
            lines += [f"  FAIL {r['test']} on {r['platform']}: {r['reason']}"[:200]
                      for r in run.enforcement if r["verdict"] == "fail"]  # fmt: skip
        if not a.rows:
            continue
        lines.append(
            "overhead vs bare of the primary metric, 95 % CI (R > 1 costs more; startup: p50s)"
        )
        names = list(dict.fromkeys(r.benchmark.name for r in a.rows))
        width = min(30, max(len(n) for n in [*names, "benchmark"]))
        heads = [p + (" (TCG)" if p in a.tcg else "") for p in others]
        lines.append(f"{'benchmark':{width}}  " + "  ".join(f"{h:22}" for h in heads))
        for name in names:
            cells = [_short_ratio(a.row(name, p)) for p in others]
            lines.append(f"{name[:width]:{width}}  " + "  ".join(f"{c:22}" for c in cells))
        lines += [f"skipped {p}: {reason}" for p, reason in sorted(run.skipped.items())]
        if a.warnings:
            lines.append(f"warnings ({len(a.warnings)}):")
            lines += [f"  {w}" for w in a.warnings[:WARNINGS_SHOWN]]
            if len(a.warnings) > WARNINGS_SHOWN:
                lines.append(f"  ... {len(a.warnings) - WARNINGS_SHOWN} more in the report")
    if len(lines) > SUMMARY_MAX_LINES:
        hidden = len(lines) - SUMMARY_MAX_LINES + 1
        lines = [*lines[: SUMMARY_MAX_LINES - 1], f"... {hidden} more lines: see summary.md"]
    return [line.rstrip() for line in lines]


def _short_ratio(row: Row | None) -> str:
    """`1.004 [0.998,1.011]` ("?" when the run had too few blocks), or why there is none."""
    if row is None:
        return "-"
    if row.ratio is None:
        return "excluded (TCG)" if row.note.startswith("TCG") else "-"
    if row.ratio.low is None or row.ratio.high is None:
        return f"{row.ratio.value:.3f} (no CI)"
    mark = "?" if isinstance(row.ratio, OverheadRatio) and row.ratio.disagree else ""
    return f"{row.ratio.value:.3f} [{row.ratio.low:.3f},{row.ratio.high:.3f}]{mark}"
