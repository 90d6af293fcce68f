"""The time figure: mean foreground Dice against training minutes, one line per variant, one panel per
(dataset, device).

Drawn for the datasets whose rows hold snapshots (``budget_seconds`` set, from ``run --snapshots``). A point is
one evaluated model: a run's final model or one of its snapshots, at the training time it had (``train_seconds``).
A variant's line goes through the points of its runs that have snapshots; a variant without any (e.g. rows filed
by another tool, whatever their ``source``) gets the points of all its runs. Rows without Dice (benchmarks) are
left out. Training times of different devices are not comparable, so each device gets its own panel.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pandas as pd
from matplotlib.figure import Figure

from medseg_mem.report.plot import save_figure
from medseg_mem.report.tables import variant_order

Curves = Dict[Tuple[str, str], Dict[str, List[Tuple[float, float]]]]
FILE_NAME = "comparison-time.png"


def curve_points(results: pd.DataFrame) -> Curves:
    """``{(dataset, device): {variant: [(training minutes, mean foreground Dice), ...]}}``, each line in time
    order, for the datasets with snapshot rows (empty when there are none).

    Args:
        results: rows as from :func:`medseg_mem.report.results.read_results`.
    """
    foreground = results["class_index"].gt(0).fillna(False).astype(bool)
    rows = results[foreground & results["dice"].notna() & results["train_seconds"].notna()]
    timed = set(rows.loc[rows["budget_seconds"].notna(), "dataset"])
    rows = rows[rows["dataset"].isin(timed)]
    rows = rows.assign(_budget=rows["budget_seconds"].fillna(-1.0))  # a run's final model: its own point
    curves: Curves = {}
    for (dataset, device), panel in rows.groupby(["dataset", "device"], sort=True):
        for variant, part in panel.groupby("variant", sort=False):
            with_snapshots = set(part.loc[part["budget_seconds"].notna(), "run_id"])
            if with_snapshots:
                part = part[part["run_id"].isin(with_snapshots)]
            points = part.groupby(["run_id", "_budget"]).agg(seconds=("train_seconds", "first"), dice=("dice", "mean"))
            line = sorted((float(s) / 60, float(d)) for s, d in zip(points["seconds"], points["dice"]))
            curves.setdefault((dataset, device), {})[variant] = line
    return curves


def plot_dice_over_time(results: pd.DataFrame, path: Path, title: str = "") -> Optional[Path]:
    """Draw the time figure of ``results`` into the PNG ``path``; ``None`` (nothing written) without snapshot rows.

    Args:
        results: rows as from :func:`medseg_mem.report.results.read_results`.
        path: the PNG file to write.
        title: a figure title (e.g. the results file name).
    """
    curves = curve_points(results)
    if not curves:
        return None
    columns = min(2, len(curves))
    rows = math.ceil(len(curves) / columns)
    figure = Figure(figsize=(6.8 * columns, 5.0 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    colour = {v: f"C{i % 10}" for i, v in enumerate(variant_order({v for c in curves.values() for v in c}))}
    for ax, ((dataset, device), lines) in zip(axes, sorted(curves.items())):
        for variant in variant_order(lines):
            minutes, dice = zip(*lines[variant])
            ax.plot(minutes, [100 * d for d in dice], marker="o", color=colour[variant], label=variant)
        ax.set_xlabel(f"training time (min) — {device or 'unknown device'}")
        ax.set_ylabel("mean foreground Dice (%)")
        ax.set_title(f"{dataset or 'unknown dataset'}: test Dice against training time")
        dice = [100 * d for line in lines.values() for _, d in line]
        ax.set_xlim(left=0)
        ax.set_ylim(max(0.0, min(dice) - 5), min(100.0, max(dice) + 5) if max(dice) > 0 else 10.0)
        ax.grid(True, alpha=0.35)
        ax.legend(fontsize=8, loc="best")  # placed where it hides no point
    for ax in axes[len(curves):]:
        ax.set_axis_off()
    if title:
        figure.suptitle(title)
    return save_figure(figure, path)
