"""The comparison figure: mean Dice against peak memory, one panel per (device, memory method).

Runs measured on different devices or with different memory methods never share a panel. Colour marks the
variant, marker shape the dataset; every point is labelled with its variant. Benchmark groups (no Dice) get their
own panels: inference time against peak memory. Uses matplotlib's object API (no pyplot), so no display is needed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from medseg_mem.core.files.atomic import replacing
from medseg_mem.report.format import method_words
from medseg_mem.report.tables import Group, variant_order

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_UNITS = ((1024**4, "TiB"), (1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB"), (1, "B"))
#: Use a log memory axis when the largest value is more than this many times the smallest.
LOG_RATIO = 20.0
#: Label offsets (points) and alignment by variant position, so labels of nearby points do not overlap; a thin
#: leader line and the variant's colour tie each label to its point.
_LABEL_OFFSETS = (((14, 12), "left"), ((14, -18), "left"), ((-14, 12), "right"))


def plot_comparison(groups: Sequence[Group], path: Path, title: str = "") -> Path:
    """Draw the comparison figure of ``groups`` and save it as a PNG at ``path``.

    Args:
        groups: from :func:`medseg_mem.report.tables.build_groups`.
        path: the PNG file to write.
        title: a figure title (e.g. the results file name).

    Returns:
        ``path``.
    """
    panels = _panels(groups)
    columns = min(2, max(1, len(panels)))
    rows = max(1, math.ceil(len(panels) / columns))
    figure = Figure(figsize=(6.8 * columns, 5.2 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    variants = variant_order({v for g in groups for v in g.table["variant"]})
    datasets = sorted({g.dataset for g in groups})
    style = _Style(variants, datasets)
    for ax, (source, members) in zip(axes, panels):
        _draw_panel(ax, source, members, style)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    if not panels:
        axes[0].text(0.5, 0.5, "no results to plot", ha="center", va="center", transform=axes[0].transAxes)
    if title:
        figure.suptitle(title)
    return save_figure(figure, path)


def save_figure(figure: Figure, path: Path) -> Path:
    """Write ``figure`` as PNG to ``path`` atomically (:func:`medseg_mem.core.files.atomic.replacing`): a failed or
    killed write leaves the previous file, never a half-written one.

    Raises:
        WriteError: the disk is full or the folder not writable, naming ``path``.
    """
    with replacing(Path(path), suffix=".png") as temp:
        figure.savefig(temp, dpi=110, format="png")
    return Path(path)


class _Style:
    """Colour per variant (fixed order: full, patch, cascade, others), marker per dataset."""

    def __init__(self, variants: List[str], datasets: List[str]) -> None:
        self.index = {v: i for i, v in enumerate(variants)}
        self.colour = {v: f"C{i % 10}" for i, v in enumerate(variants)}
        self.marker = {d: MARKERS[i % len(MARKERS)] for i, d in enumerate(datasets)}


def _panels(groups: Sequence[Group]) -> List[Tuple[str, List[Group]]]:
    """Collect groups into panels keyed by (source, device, memory method); run panels first."""
    panels: Dict[Tuple[str, str, str], List[Group]] = {}
    for group in groups:
        panels.setdefault((group.source, group.device, group.memory_method), []).append(group)
    ordered = sorted(panels, key=lambda k: (k[0] != "run", k[1], k[2]))
    return [(key[0], panels[key]) for key in ordered]


def _draw_panel(ax, source: str, members: List[Group], style: _Style) -> None:
    """Plot one panel: mean Dice (run) or time per case (benchmark) against peak memory."""
    y_column = "mean_dice" if source == "run" else "inference_seconds_per_case"
    points = [(g.dataset, row) for g in members for _, row in g.table.iterrows()]
    x_column = _memory_column(points)
    points = [(d, r) for d, r in points if _finite(r[x_column]) and _finite(r[y_column])]
    memory = [float(r[x_column]) for _, r in points]
    scale, unit = _unit(max(memory, default=1.0))
    for dataset, row in points:
        x = float(row[x_column]) / scale
        y = float(row[y_column]) * (100 if source == "run" else 1)
        ax.scatter([x], [y], s=70, color=style.colour[row["variant"]], marker=style.marker[dataset],
                   edgecolors="black", linewidths=0.5, zorder=3)  # fmt: skip
        label = row["variant"] if source == "run" else _benchmark_label(row)
        offset, align = _LABEL_OFFSETS[style.index[row["variant"]] % len(_LABEL_OFFSETS)]
        ax.annotate(label, (x, y), xytext=offset, textcoords="offset points", ha=align, fontsize=9,
                    color=style.colour[row["variant"]], arrowprops={"arrowstyle": "-", "lw": 0.6, "color": "grey"})
    if memory and min(memory) > 0 and max(memory) / min(memory) > LOG_RATIO:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    device = members[0].device or "unknown device"
    what = method_words(members[0].memory_method)
    if x_column == "peak_memory_bytes" and source == "run":
        what = f"what the inference added to the process ({what})"
    ax.set_xlabel(f"{what} ({unit}) — {device}")
    if source == "run":
        ax.set_ylabel("mean foreground Dice (%)")
        ax.set_ylim(-3, 103)
        ax.set_title("accuracy against memory (latest run per variant)")
    else:
        ax.set_ylabel("inference time per case (s)")
        ax.set_title("benchmark: time against memory")
    if not points:
        ax.text(0.5, 0.5, "no points with memory and a value", ha="center", va="center", transform=ax.transAxes)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    ax.margins(x=0.15)
    _legend(ax, points, style)


def _memory_column(points) -> str:
    """The x axis: the whole process's inference peak where every run has it, else what the inference added
    (rows from before the process was measured; benchmark rows)."""
    process = [row.get("process_peak_bytes") for _, row in points]
    return "process_peak_bytes" if process and all(_finite(value) for value in process) else "peak_memory_bytes"


def _legend(ax, points, style: _Style) -> None:
    """Legend: one entry per variant (colour) and one per dataset (marker shape)."""
    variants = variant_order({r["variant"] for _, r in points})
    datasets = sorted({d for d, _ in points})
    handles = [Line2D([], [], linestyle="", marker="o", color=style.colour[v], label=v) for v in variants]
    handles += [Line2D([], [], linestyle="", marker=style.marker[d], color="grey", label=d) for d in datasets]
    if handles:
        ax.legend(handles=handles, fontsize=8, loc="best")


def _benchmark_label(row) -> str:
    """Label a benchmark point with its variant and, when set, its slab size."""
    slab = str(row.get("slab_size", "")).strip()
    return f"{row['variant']} (slab {slab})" if slab else str(row["variant"])


def _unit(largest: float) -> Tuple[float, str]:
    """Return the binary unit (scale, name) in which ``largest`` bytes reads best."""
    return next((scale, name) for scale, name in _UNITS if largest >= scale or scale == 1)


def _finite(value: object) -> bool:
    """True when ``value`` is a finite number."""
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
