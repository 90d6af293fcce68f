"""Where an overlay cuts a volume, and which voxels outline each class: plain numpy on label maps.

The three planes pass through one point: the foreground voxel (label > 0 in the prediction or the ground truth)
nearest the centroid of that foreground, so each plane holds some of it even when the foreground is in pieces
(the centroid of two rods lies between them); without foreground, the volume's centre. A class's outline is
drawn per plane: the ground truth's on the class's own boundary voxels (inside it), the prediction's on the
voxels just outside the predicted class, so a perfect prediction shows both lines side by side and neither hides
the other.

Example:
    >>> truth = np.zeros((5, 5, 5), np.uint8); truth[1:4, 1:4, 2] = 1
    >>> focus_point(truth, None)
    (2, 2, 2)
    >>> int(inner_outline(truth[:, :, 2] == 1).sum()), int(outer_outline(truth[:, :, 2] == 1).sum())
    (8, 16)
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

Point = Tuple[int, int, int]
#: The plane through the focus point across each axis, named by the axis it fixes.
AXES = (0, 1, 2)


def focus_point(prediction: Optional[np.ndarray], truth: Optional[np.ndarray]) -> Point:
    """The voxel the three planes pass through (see the module docstring).

    Args:
        prediction: a label map ``(X, Y, Z)``, or ``None``.
        truth: the ground truth on the same grid, or ``None``.
    """
    maps = [m for m in (prediction, truth) if m is not None]
    shape = maps[0].shape
    foreground = np.zeros(shape, dtype=bool)
    for labels in maps:
        foreground |= np.asarray(labels) > 0
    voxels = np.argwhere(foreground)
    if not len(voxels):
        return tuple(int(s) // 2 for s in shape)
    centroid = voxels.mean(axis=0)
    nearest = voxels[np.argmin(((voxels - centroid) ** 2).sum(axis=1))]
    return tuple(int(v) for v in nearest)


def plane(volume: np.ndarray, axis: int, point: Point) -> np.ndarray:
    """The 2D plane of ``volume`` (its last three axes spatial) across ``axis`` through ``point``."""
    index = [slice(None)] * volume.ndim
    index[volume.ndim - 3 + axis] = point[axis]
    return np.asarray(volume[tuple(index)])


#: In-plane neighbour offsets: the four sharing an edge, and all eight.
EDGE = ((-1, 0), (1, 0), (0, -1), (0, 1))
AROUND = EDGE + ((-1, -1), (-1, 1), (1, -1), (1, 1))


def _shifted(mask: np.ndarray, offsets) -> List[np.ndarray]:
    """``mask`` seen from each neighbour at ``offsets`` (beyond the plane's edge: False)."""
    padded = np.pad(mask, 1, constant_values=False)
    x, y = mask.shape
    return [padded[1 + dx : 1 + dx + x, 1 + dy : 1 + dy + y] for dx, dy in offsets]


def inner_outline(mask: np.ndarray) -> np.ndarray:
    """The pixels of ``mask`` with an edge-neighbour outside it (the plane's edge counts as outside)."""
    mask = np.asarray(mask, dtype=bool)
    return mask & ~np.logical_and.reduce(_shifted(mask, EDGE))


def outer_outline(mask: np.ndarray) -> np.ndarray:
    """The pixels outside ``mask`` that touch it, diagonals included (a closed line around it)."""
    mask = np.asarray(mask, dtype=bool)
    return np.logical_or.reduce(_shifted(mask, AROUND)) & ~mask


def outlines(labels: np.ndarray, classes: Sequence[int], outside: bool) -> np.ndarray:
    """A boolean plane: the outline of every class of ``classes`` in the 2D label plane ``labels``, drawn
    outside each class (the prediction's) or inside it (the ground truth's)."""
    drawn = np.zeros(labels.shape, dtype=bool)
    for value in classes:
        mask = labels == value
        if mask.any():
            drawn |= outer_outline(mask) if outside else inner_outline(mask)
    return drawn
