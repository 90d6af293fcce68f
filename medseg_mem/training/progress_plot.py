"""``progress.png``: a stage's training curves from its ``log.csv``, like nnU-Net's ``progress.png``.

Four panels: the training loss (each step faint, a moving average over 2 % of the steps bold, the learning rate
dashed on a second axis) and the validation Dice (the mean bold, one line per foreground class) against the step
(top) and against the stage's training time (bottom). Uses matplotlib's object API (no pyplot, no display) and
a fixed layout, so a drawing costs about 0.2 s; it is written atomically.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List

import numpy as np
from matplotlib.figure import Figure

from medseg_mem.core.files.atomic import replacing

SMOOTHING = 0.02  # fraction of the steps the moving average spans
DPI = 80


def plot_progress(log: Dict[str, List[float]], title: str, png_path: Path) -> Path:
    """Draw the curves of ``log`` (a stage's ``log.csv`` as :func:`~medseg_mem.training.curves.read_log` reads it)
    under ``title`` (``<run>/<stage>``) into ``png_path``.

    Raises:
        WriteError: ``png_path`` cannot be written, naming it.
    """
    figure = Figure(figsize=(11, 7))
    figure.subplots_adjust(left=0.07, right=0.93, top=0.92, bottom=0.08, hspace=0.35, wspace=0.3)
    axes = figure.subplots(2, 2)
    seconds, unit = _time_axis(log.get("seconds", []))
    for row, (x, label) in enumerate(((log.get("step", []), "step"), (seconds, f"training time ({unit})"))):
        _loss_panel(axes[row][0], np.asarray(x), log, label, with_lr=row == 0)
        _dice_panel(axes[row][1], np.asarray(x), log, label)
    figure.suptitle(f"{title}: {len(log.get('step', []))} steps")
    with replacing(Path(png_path), suffix=".png") as temp:
        figure.savefig(temp, dpi=DPI, format="png")
    return Path(png_path)


def _time_axis(seconds: List[float]):
    """Training time in seconds, or minutes/hours when it is long, and the unit's name."""
    values = np.asarray(seconds, dtype=np.float64)
    longest = float(values.max()) if values.size else 0.0
    for scale, unit in ((3600.0, "h"), (60.0, "min")):
        if longest >= 2 * scale:
            return values / scale, unit
    return values, "s"


def _loss_panel(ax, x: np.ndarray, log: Dict[str, List[float]], label: str, with_lr: bool) -> None:
    loss = np.asarray(log.get("loss", []), dtype=np.float64)
    ax.set_title("training loss")
    ax.set_xlabel(label)
    if not loss.size:
        return
    ax.plot(x, loss, color="C0", alpha=0.25, linewidth=0.8, label="loss per step")
    width = max(1, int(math.ceil(SMOOTHING * loss.size)))
    if width > 1:
        smooth = np.convolve(loss, np.ones(width) / width, mode="valid")
        ax.plot(x[width - 1 :], smooth, color="C0", linewidth=1.8, label=f"mean of {width} steps")
    ax.legend(loc="upper right", fontsize=8)
    if with_lr:
        lr = ax.twinx()
        lr.plot(x, log["lr"], color="0.4", linestyle="--", linewidth=1)
        lr.set_ylim(0, 1.1 * max(log["lr"]) or 1.0)  # from 0, so a constant rate reads as one
        lr.set_ylabel("learning rate (dashed)", color="0.4")


def _dice_panel(ax, x: np.ndarray, log: Dict[str, List[float]], label: str) -> None:
    ax.set_title("validation Dice")
    ax.set_xlabel(label)
    ax.set_ylim(-0.02, 1.02)
    mean = np.asarray(log.get("val_mean_dice", []), dtype=np.float64)
    done = ~np.isnan(mean)
    if not done.any():
        ax.text(0.5, 0.5, "no validation yet", ha="center", va="center", transform=ax.transAxes)
        return
    classes = [key for key in log if key.startswith("val_dice_")]
    for index, key in enumerate(classes):
        ax.plot(x[done], np.asarray(log[key])[done], marker=".", linewidth=1, color=f"C{index + 1}",
                label=key[len("val_dice_"):])  # fmt: skip
    ax.plot(x[done], mean[done], marker="o", linewidth=2, color="k", label="mean")
    ax.legend(loc="best", fontsize=8)
