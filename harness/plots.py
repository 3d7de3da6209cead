"""The report's plots as PNG bytes: overhead ratios, startup distributions, IO latency percentiles.

Which plots a run gets is decided here too (category_figures, io_latency_figure).
Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so nothing
needs a display and no global figure state survives a call.
"""

from __future__ import annotations

import io
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from harness.stats import OverheadRatio, Ratio

if TYPE_CHECKING:  # report imports this module; the types only are needed here
    from harness.report import RunAnalysis

# Fixed colours so a platform looks the same in every plot of every report.
PLATFORM_COLOURS = {
    "bare": "#555555",
    "container": "#1f77b4",
    "oci:runc": "#ff7f0e",
    "oci:crun": "#2ca02c",
    "vm": "#d62728",
}
_SPARE_COLOURS = ("#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def colour(platform: str, order: Sequence[str]) -> str:
    """The platform's colour; unknown platforms take spare colours by their position in order."""
    if platform in PLATFORM_COLOURS:
        return PLATFORM_COLOURS[platform]
    unknown = [p for p in order if p not in PLATFORM_COLOURS]
    index = unknown.index(platform) if platform in unknown else 0
    return _SPARE_COLOURS[index % len(_SPARE_COLOURS)]


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)  # attaches the Agg canvas to the figure
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def ratio_plot(
    title: str,
    benchmarks: Sequence[str],
    ratios: Mapping[str, Sequence[OverheadRatio | Ratio | None]],
    emulated: Collection[str] = (),
) -> bytes:
    """Ratio to bare per benchmark: a point with its CI whisker and faint per-block points.

    ratios maps platform -> one entry per benchmark (None: no ratio for it);
    platforms in emulated (TCG VMs) are labelled so.
    """
    platforms = list(ratios)
    fig = Figure(figsize=(max(6.0, 1.2 * len(benchmarks) * max(1, len(platforms))), 4.0))
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(platforms))
    for p_index, platform in enumerate(platforms):
        shade = colour(platform, platforms)
        for b_index, ratio in enumerate(ratios[platform]):
            if ratio is None:
                continue
            x = b_index - 0.4 + width * (p_index + 0.5)
            if isinstance(ratio, OverheadRatio) and ratio.block_ratios:
                ax.scatter(
                    [x + min(0.1, width * 0.25)] * len(ratio.block_ratios),
                    ratio.block_ratios,
                    s=10,
                    color=shade,
                    alpha=0.35,
                )
            if ratio.low is not None and ratio.high is not None:
                ax.errorbar(
                    [x],
                    [ratio.value],
                    yerr=[[ratio.value - ratio.low], [ratio.high - ratio.value]],
                    fmt="o",
                    color=shade,
                    capsize=4,
                )
            else:
                ax.plot([x], [ratio.value], "o", color=shade)
        tcg = " (TCG)" if platform in emulated else ""
        ax.plot([], [], "o", color=shade, label=f"{platform}/bare{tcg}")
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(benchmarks)), list(benchmarks), rotation=20, ha="right")
    ax.set_ylabel("overhead ratio (>1 costs more)")
    ax.set_title(title)
    ax.legend(fontsize="small")
    return _png(fig)


def startup_plot(title: str, values: Mapping[str, Sequence[float]], unit: str) -> bytes:
    """One box per platform with every cold start drawn over it as a point."""
    platforms = [p for p in values if values[p]]
    fig = Figure(figsize=(max(5.0, 1.4 * len(platforms)), 4.0))
    ax = fig.add_subplot()
    ax.boxplot([list(values[p]) for p in platforms], tick_labels=platforms, showfliers=False)
    for index, platform in enumerate(platforms, start=1):
        points = list(values[platform])
        # A deterministic spread so overlapping points stay visible.
        offsets = [index + 0.25 * ((i % 9) / 8.0 - 0.5) for i in range(len(points))]
        ax.scatter(offsets, points, s=8, alpha=0.5, color=colour(platform, platforms))
    everything = [v for p in platforms for v in values[p]]
    if everything and min(everything) > 0 and max(everything) > 20 * min(everything):
        ax.set_yscale("log")  # a VM's seconds next to a fork's milliseconds
    ax.set_ylabel(unit)
    ax.set_title(title)
    return _png(fig)


@dataclass(frozen=True)
class LatencyBar:
    """Median completion latency percentiles of one IO benchmark on one platform."""

    benchmark: str
    platform: str
    p50: float
    p99: float


def io_latency_plot(bars: Sequence[LatencyBar], unit: str) -> bytes:
    """Per IO benchmark and platform: p99 as a pale bar, p50 as a solid bar in front of it."""
    benchmarks = list(dict.fromkeys(b.benchmark for b in bars))
    platforms = list(dict.fromkeys(b.platform for b in bars))
    fig = Figure(figsize=(max(6.0, 1.0 * len(benchmarks) * len(platforms)), 4.0))
    ax = fig.add_subplot()
    width = 0.8 / len(platforms)
    for bar in bars:
        x = benchmarks.index(bar.benchmark) - 0.4 + width * (platforms.index(bar.platform) + 0.5)
        shade = colour(bar.platform, platforms)
        ax.bar([x], [bar.p99], width=width * 0.9, color=shade, alpha=0.35)
        ax.bar([x], [bar.p50], width=width * 0.9, color=shade)
    for platform in platforms:
        ax.bar([0], [0], color=colour(platform, platforms), label=platform)
    ax.set_xticks(range(len(benchmarks)), benchmarks, rotation=20, ha="right")
    ax.set_ylabel(f"completion latency ({unit}); solid p50, pale p99")
    ax.set_title("IO completion latency percentiles")
    ax.legend(fontsize="small")
    return _png(fig)


def category_figures(a: RunAnalysis, category: str) -> list[tuple[str, bytes]]:
    """(alt text, PNG) for a category: its ratio plot, or for startup one distribution a benchmark."""
    rows = a.primary_rows(category)
    names = list(dict.fromkeys(r.benchmark.name for r in rows))
    if category == "startup":
        figures = []
        for name in names:
            mine = [r for r in rows if r.benchmark.name == name]
            values = {r.platform: r.values for r in mine}
            figures.append(
                (f"{name} distribution", startup_plot(name, values, mine[0].metric.unit))
            )
        return figures
    series: dict[str, list[OverheadRatio | Ratio | None]] = {}
    for platform in a.platforms:
        found = [a.row(name, platform) for name in names]
        series[platform] = [r.ratio if r else None for r in found]
    series = {p: rs for p, rs in series.items() if any(r is not None for r in rs)}
    if not series:
        return []
    png = ratio_plot(f"{category}: overhead vs bare", names, series, a.tcg)
    return [(f"{category} ratios", png)]


def io_latency_figure(a: RunAnalysis) -> tuple[str, bytes] | str:
    """(alt text, PNG) of clat p50/p99 medians of the io benchmarks, or a note why there is none."""
    bars, unit = [], ""
    for r in a.rows:
        if r.benchmark.category != "io" or "clat_p50" not in r.metric.name:
            continue
        partner = a.row(r.benchmark.name, r.platform, r.metric.name.replace("clat_p50", "clat_p99"))
        if partner is not None:
            # "read_clat_p50_us" of io.randrw -> "io.randrw read"
            label = f"{r.benchmark.name} {r.metric.name.split('clat_p50')[0].strip('_')}".strip()
            bars.append(LatencyBar(label, r.platform, r.estimate.value, partner.estimate.value))
            unit = r.metric.unit
    if not bars:
        return "IO latency plot skipped: no io benchmark reports clat_p50/clat_p99 metrics."
    return "IO latency percentiles", io_latency_plot(bars, unit)
