"""The voxel geometry of the preprocessing pipeline, computed from a header alone: where ``Orientationd("RAS")``
puts each axis, and the grid ``Spacingd`` resamples onto, with MONAI's own arithmetic.

Orientation is index arithmetic: RAS axis ``j`` is file axis ``axes[j]``, read backwards where ``flips[j]``; no
voxel is copied to know it. Resampling follows ``monai.transforms.Spacing`` step by step (``zoom_affine`` keeping
the rotation, ``compute_shape_offset`` for the shape and origin, ``np.linalg.solve`` for the voxel-to-voxel
transform, the ``AFFINE_TOL`` test that skips resampling, and the normalised ``theta`` its ``AffineTransform``
hands to ``affine_grid``), so the sample positions are MONAI's to the last bit.

Example:
    >>> orientation = ras_orientation(np.diag([-1.0, 1.0, 2.0, 1.0]), (4, 5, 6))
    >>> orientation.axes, orientation.flips, orientation.shape
    ((0, 1, 2), (True, False, False), (4, 5, 6))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np
import torch

from medseg_mem.core.errors import MedsegError

RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # the labels build_preprocessing gives Orientationd


@dataclass(frozen=True)
class Orientation:
    """How a scan's file axes become the RAS grid of ``Orientationd``.

    Args:
        axes: ``axes[j]`` is the file axis that becomes RAS axis ``j``.
        flips: ``flips[j]`` is True when RAS axis ``j`` runs backwards along its file axis.
        file_shape: the scan's spatial shape in file order.
        affine: the RAS grid's affine (float64, as MONAI computes it).
    """

    axes: Tuple[int, int, int]
    flips: Tuple[bool, bool, bool]
    file_shape: Tuple[int, int, int]
    affine: np.ndarray

    @property
    def shape(self) -> Tuple[int, int, int]:
        """Spatial shape of the RAS grid."""
        return tuple(self.file_shape[axis] for axis in self.axes)

    def file_range(self, start: int, stop: int) -> Tuple[int, int, int]:
        """``(file axis, first, stop)``: the file's slices that hold RAS slices ``[start, stop)`` of the last axis."""
        axis, depth = self.axes[2], self.file_shape[self.axes[2]]
        return (axis, depth - stop, depth - start) if self.flips[2] else (axis, start, stop)

    def to_ras(self, block: np.ndarray) -> np.ndarray:
        """View of a file-order block ``(C, a, b, c)`` in RAS order (``file_range``'s slices, flips undone)."""
        flipped = [slice(None, None, -1) if self.flips[self.axes.index(axis)] else slice(None) for axis in range(3)]
        return block[(slice(None), *flipped)].transpose(0, *(1 + a for a in self.axes))

    def to_file(self, block: np.ndarray) -> np.ndarray:
        """View of a RAS-order block ``(..., X, Y, Z)`` in file order (the inverse of :meth:`to_ras`)."""
        lead = block.ndim - 3
        order = tuple(range(lead)) + tuple(lead + self.axes.index(axis) for axis in range(3))
        moved = block.transpose(order)
        flipped = [slice(None, None, -1) if self.flips[self.axes.index(axis)] else slice(None) for axis in range(3)]
        return moved[(Ellipsis, *flipped)]


def ras_orientation(affine: np.ndarray, file_shape: Sequence[int]) -> Orientation:
    """The :class:`Orientation` that ``Orientationd(axcodes="RAS")`` applies to a scan with ``affine``.

    Raises:
        MedsegError: when the affine has no orientation (a zero or degenerate matrix).
    """
    import nibabel as nib

    affine = np.asarray(affine, dtype=np.float64)
    try:
        source = nib.io_orientation(affine)
        ornt = nib.orientations.ornt_transform(source, nib.orientations.axcodes2ornt("RAS", labels=RAS_LABELS))
    except ValueError as error:
        raise MedsegError(f"the scan's affine has no orientation ({error}); fix its header (sform/qform)") from error
    shape = tuple(int(s) for s in file_shape)
    ras_affine = affine @ nib.orientations.inv_ornt_aff(ornt, shape)
    axes = tuple(int(a) for a in np.argsort(ornt[:, 0]))
    flips = tuple(bool(ornt[axis, 1] == -1) for axis in axes)
    return Orientation(axes, flips, shape, ras_affine)


@dataclass(frozen=True)
class Resampling:
    """The grid ``Spacing`` resamples a RAS grid onto, and how.

    Args:
        in_shape: the RAS grid's spatial shape.
        out_shape: the resampled grid's spatial shape.
        src_affine: the RAS grid's affine.
        affine: the resampled grid's affine as MONAI tracks it (``src_affine @ xform``, torch float64).
        xform: voxel of the output -> voxel of the input (4 x 4, float64).
        unchanged: True when MONAI keeps the image as it is (affines within ``AFFINE_TOL``, same shape).
    """

    in_shape: Tuple[int, int, int]
    out_shape: Tuple[int, int, int]
    src_affine: np.ndarray
    affine: np.ndarray
    xform: np.ndarray
    unchanged: bool

    def theta(self) -> torch.Tensor:
        """The normalised float32 ``theta`` (1, 4, 4) MONAI's ``AffineTransform`` gives ``affine_grid``."""
        return grid_theta(self.xform, self.in_shape, self.out_shape)

    def inverse(self) -> "Resampling":
        """The resampling back from :attr:`out_shape` onto :attr:`in_shape` (what ``Invertd`` does)."""
        return resampling_between(self.affine, self.out_shape, self.src_affine, self.in_shape)


def spacing_geometry(affine: np.ndarray, shape: Sequence[int], pixdim: Sequence[float]) -> Resampling:
    """The :class:`Resampling` ``Spacing(pixdim, diagonal=False, scale_extent=False)`` applies to a grid.

    Args:
        affine: the RAS grid's affine (:attr:`Orientation.affine`).
        shape: the RAS grid's spatial shape.
        pixdim: the run's spacing in mm.

    Example:
        >>> spacing_geometry(np.diag([2.0, 2.0, 2.0, 1.0]), (4, 4, 4), (1.0, 1.0, 1.0)).out_shape
        (7, 7, 7)
    """
    from monai.data.utils import compute_shape_offset, zoom_affine

    affine = np.asarray(affine, dtype=np.float64)
    target = zoom_affine(affine, np.asarray(pixdim, dtype=np.float64), diagonal=False)
    out_shape, offset = compute_shape_offset(tuple(shape), affine, target, False)
    target[:3, -1] = offset[:3]
    return resampling_between(affine, tuple(shape), target, tuple(int(s) for s in out_shape))


def resampling_between(src_affine: np.ndarray, in_shape, dst_affine: np.ndarray, out_shape) -> Resampling:
    """The :class:`Resampling` of MONAI's ``spatial_resample`` from one grid onto another."""
    from monai.data.utils import AFFINE_TOL

    xform = np.linalg.solve(np.asarray(src_affine, np.float64), np.asarray(dst_affine, np.float64))
    same_shape = tuple(in_shape) == tuple(out_shape)
    unchanged = same_shape and (
        np.allclose(src_affine, dst_affine, atol=AFFINE_TOL) or np.allclose(xform, np.eye(4), atol=AFFINE_TOL)
    )
    shapes = tuple(int(s) for s in in_shape), tuple(int(s) for s in out_shape)
    tracked = (torch.as_tensor(src_affine, dtype=torch.float64) @ torch.as_tensor(xform)).numpy()
    tracked = np.asarray(src_affine, dtype=np.float64) if unchanged else tracked  # MONAI keeps the image as it is
    return Resampling(*shapes, np.asarray(src_affine), tracked, xform, bool(unchanged))


def grid_theta(xform: np.ndarray, in_shape: Sequence[int], out_shape: Sequence[int]) -> torch.Tensor:
    """MONAI's ``AffineTransform(normalized=False, reverse_indexing=True, align_corners=False)`` theta."""
    from monai.networks.utils import to_norm_affine

    theta = torch.as_tensor(xform).to(torch.float32)[None].clone()
    theta = to_norm_affine(theta, list(in_shape), list(out_shape), align_corners=False, zero_centered=False)
    reverse = torch.as_tensor([2, 1, 0])
    theta[:, :3] = theta[:, reverse]
    theta[:, :, :3] = theta[:, :, reverse]
    return theta
