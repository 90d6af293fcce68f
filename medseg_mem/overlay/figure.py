"""The overlay PNG: three planes of an image through its foreground, the prediction and the ground truth outlined.

Each panel shows one plane (:mod:`~medseg_mem.overlay.planes`) of the image's first channel in grey (windowed to
its 0.5-99.5 percentiles), each predicted class lightly filled in its class colour (named in the legend), the
ground truth's outline in :data:`TRUTH_COLOUR` on the classes' own boundary voxels and the prediction's outline
in :data:`PREDICTION_COLOUR` on the voxels just outside the predicted classes; the outlines are opaque, so a
boundary voxel's pixels have exactly their colour. Planes are shown the radiological way round for a RAS grid
(the plane across x: y right, z up; across y: x right, z up; across z: x right, y up), each voxel as a block of
pixels (no interpolation), stretched to the voxel spacing when it is given. Uses matplotlib's object API (no
pyplot, no display); files are written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from medseg_mem.core.files.atomic import replacing
from medseg_mem.overlay.planes import AXES, Point, focus_point, outlines, plane

PREDICTION_COLOUR = (1.0, 0.0, 0.0)  # red
TRUTH_COLOUR = (0.0, 1.0, 0.0)  # green
#: Fill colours of the classes (matplotlib's tab10 without its red and green), class 1 first.
CLASS_COLOURS = ("#1f77b4", "#ff7f0e", "#9467bd", "#17becf", "#8c564b", "#e377c2", "#bcbd22", "#7f7f7f")
FILL_ALPHA = 0.3
WINDOW = (0.5, 99.5)  # percentiles of the image shown from black to white
DPI = 100
PANEL_INCHES = 3.0  # height of a panel
MIN_INCHES = 6.5  # narrowest figure (room for the legend)
AXIS_NAMES = "xyz"


def class_colour(value: int) -> str:
    """The fill colour of class ``value`` (1, 2, ...)."""
    return CLASS_COLOURS[(value - 1) % len(CLASS_COLOURS)]


def overlay_figure(image: np.ndarray, prediction: np.ndarray, truth: Optional[np.ndarray],
                   class_names: Sequence[str], title: str = "",
                   spacing: Optional[Sequence[float]] = None) -> Figure:  # fmt: skip
    """The overlay figure (see the module docstring).

    Args:
        image: ``(X, Y, Z)`` or channel-first ``(C, X, Y, Z)`` (the first channel is shown).
        prediction: the label map ``(X, Y, Z)`` on the image's grid.
        truth: the ground truth on the same grid, or ``None`` (``predict --overlay``).
        class_names: indexed by label value, background first.
        title: the figure's title.
        spacing: voxel size in mm per axis (default: square voxels).
    """
    image = np.asarray(image[0] if np.ndim(image) == 4 else image, dtype=np.float32)
    prediction = np.asarray(prediction)
    truth = None if truth is None else np.asarray(truth)
    point = focus_point(prediction, truth)
    spacing = (1.0, 1.0, 1.0) if spacing is None else tuple(float(s) for s in spacing)
    ratios = [_extent(image.shape, spacing, axis) for axis in AXES]
    widths = [w / h for w, h in ratios]
    figure = Figure(figsize=(max(MIN_INCHES, PANEL_INCHES * sum(widths) * 1.15 + 0.5), PANEL_INCHES / 0.71), dpi=DPI)
    axes = figure.subplots(1, 3, gridspec_kw={"width_ratios": widths})
    window = _window(image)
    for ax, axis in zip(axes, AXES):
        _panel(ax, axis, point, (image, prediction, truth), window, spacing, len(class_names))
    figure.subplots_adjust(left=0.08, right=0.98, top=0.84, bottom=0.17, wspace=0.3)
    figure.legend(handles=_legend(prediction, truth, class_names), loc="lower center", ncol=6, fontsize=8,
                  frameon=False)  # fmt: skip
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def draw_overlay(path: Path, *args, **kwargs) -> Path:
    """Write :func:`overlay_figure` of ``args``/``kwargs`` as a PNG at ``path`` (atomically).

    Raises:
        WriteError: the file cannot be written, naming it.
    """
    figure = overlay_figure(*args, **kwargs)
    with replacing(Path(path), suffix=".png") as temp:
        figure.savefig(temp, dpi=DPI, format="png")
    return Path(path)


def _extent(shape, spacing, axis: int) -> Tuple[float, float]:
    """(width, height) in mm of the plane across ``axis``."""
    across, up = [a for a in AXES if a != axis]
    return shape[across] * spacing[across], shape[up] * spacing[up]


def _window(image: np.ndarray) -> Tuple[float, float]:
    sample = image.ravel()[:: max(1, image.size // 1_000_000)]  # percentiles of at most ~1M voxels
    low, high = (float(v) for v in np.percentile(sample, WINDOW))
    return low, high if high > low else low + 1.0


def plane_colours(image: np.ndarray, prediction: np.ndarray, truth: Optional[np.ndarray],
                  window: Tuple[float, float], num_classes: int) -> np.ndarray:  # fmt: skip
    """The RGB plane ``(A, B, 3)`` a panel shows for 2D planes of the image, prediction and truth."""
    low, high = window
    grey = np.clip((image - low) / (high - low), 0.0, 1.0)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    classes = range(1, num_classes)
    for value in classes:
        where = prediction == value
        rgb[where] = (1 - FILL_ALPHA) * rgb[where] + FILL_ALPHA * np.asarray(_rgb(class_colour(value)))
    if truth is not None:
        rgb[outlines(truth, classes, outside=False)] = TRUTH_COLOUR
    rgb[outlines(prediction, classes, outside=True)] = PREDICTION_COLOUR
    return rgb


def _panel(ax, axis: int, point: Point, volumes, window, spacing, num_classes: int) -> None:
    image, prediction, truth = (None if v is None else plane(v, axis, point) for v in volumes)
    rgb = plane_colours(image, prediction, truth, window, num_classes)
    across, up = [a for a in AXES if a != axis]
    ax.imshow(rgb.transpose(1, 0, 2), origin="lower", interpolation="nearest", aspect=spacing[up] / spacing[across])
    ax.set_title(f"{AXIS_NAMES[axis]} = {point[axis]}", fontsize=9)
    ax.set_xlabel(AXIS_NAMES[across], fontsize=8)
    ax.set_ylabel(AXIS_NAMES[up], fontsize=8)
    ax.tick_params(labelsize=7)


def _legend(prediction: np.ndarray, truth: Optional[np.ndarray], class_names: Sequence[str]):
    handles = [Line2D([], [], color=PREDICTION_COLOUR, linewidth=2, label="prediction")]
    if truth is not None:
        handles.append(Line2D([], [], color=TRUTH_COLOUR, linewidth=2, label="ground truth"))
    handles += [Patch(facecolor=class_colour(value), alpha=0.6, label=name)
                for value, name in enumerate(class_names) if value > 0]  # fmt: skip
    return handles


def _rgb(colour: str) -> Tuple[float, float, float]:
    from matplotlib.colors import to_rgb

    return to_rgb(colour)
