"""A scan preprocessed slab by slab: what :func:`~medseg_mem.data.transforms.build_preprocessing` makes of it,
without ever holding the whole volume.

:func:`stream_scan` opens the scan (:mod:`~medseg_mem.data.streaming.source`), works out the geometry from its
header (:mod:`~medseg_mem.data.streaming.geometry`) and, when the run needs statistics of the scan (the nonzero
moments of z-scored MRI channels, the foreground box of ``--crop-foreground``), gathers them in a survey pass:
over the file's own slices (contiguous reads; orientation only reorders voxels) for a run without resampling,
over the resampled slices otherwise. A CT run without a crop needs none: its statistics are the dataset's.
Then :meth:`ScanStream.read` serves any range of slices of the preprocessed image along its last axis, and
:meth:`ScanStream.slabs` all of them in order:

1. the RAS slices of the range are read from the file (``Orientationd`` as index arithmetic: a transpose and
   flips of the slab, never of the volume); a NaN or infinite voxel read is refused (by the survey, or, for a
   run without one, by the slab that reads it: nothing has been written then, as the writer only commits at
   the end);
2. with ``--spacing``, they are resampled with MONAI's own sample positions from the input slices they need
   (the halo; :mod:`~medseg_mem.data.streaming.sampler`);
3. cropped to the foreground box, and normalised per voxel with the gathered statistics.

Every step makes the same float32 operations as the in-memory pipeline, so the slabs equal the slices of the
whole preprocessed image; the z-scored channels only differ where float64 sums taken in another order round
the mean or standard deviation to another float32 (tested voxel for voxel). :meth:`ScanStream.downsampled` makes
the cascade's stage-1 input in one more pass.

Example:
    >>> with stream_scan(Path("ct.nii.gz"), settings) as stream:  # doctest: +SKIP
    ...     for start, slab in stream.slabs(16):
    ...         labels = network(slab)
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from medseg_mem.data.streaming.downsample import downsample_stream
from medseg_mem.data.streaming.geometry import Orientation, Resampling, ras_orientation, spacing_geometry
from medseg_mem.data.streaming.sampler import sample_range
from medseg_mem.data.streaming.source import ScanFile, open_scan
from medseg_mem.data.streaming.statistics import ForegroundBox, NonzeroMoments, normalize_slab_, zscore_channels
from medseg_mem.data.transforms import validate_settings
from medseg_mem.core.errors import MedsegError

SLAB_BYTES = 2**25  # float32 bytes of the slabs a survey reads at a time (32 MiB)


class ScanStream:
    """One scan, preprocessed with a run's settings one range of slices at a time.

    Use :func:`stream_scan`. Attributes: :attr:`shape` ``(C, X, Y, Z)`` of the preprocessed image,
    :attr:`orientation`, :attr:`resampling` (``None`` when the run keeps the native grid or MONAI would keep it),
    :attr:`box` (the crop, in the resampled grid), :attr:`moments` (per channel), :attr:`affine`.

    Args:
        scan: the opened scan.
        settings: the run's preprocessing settings (``manifest.json``'s ``"preprocessing"``).
    """

    def __init__(self, scan: ScanFile, settings: dict) -> None:
        validate_settings(settings)
        self.scan = scan
        self.settings = settings
        self.orientation: Orientation = ras_orientation(scan.affine, scan.shape)
        self.resampling: Optional[Resampling] = _resampling(self.orientation, settings)
        grid = self.resampling.out_shape if self.resampling else self.orientation.shape
        self.grid_shape: Tuple[int, int, int] = tuple(grid)
        self.box = ((0, 0, 0), self.grid_shape)
        self.moments: List[NonzeroMoments] = [NonzeroMoments() for _ in range(scan.channels)]
        self._check_channels()
        self._survey()

    @property
    def shape(self) -> Tuple[int, int, int, int]:
        """``(C, X, Y, Z)`` of the preprocessed image."""
        start, end = self.box
        return (self.scan.channels, *(int(e - s) for s, e in zip(start, end)))

    @property
    def affine(self) -> np.ndarray:
        """The preprocessed image's affine (after resampling and cropping)."""
        base = self.resampling.affine if self.resampling else self.orientation.affine
        shift = np.eye(4)
        shift[:3, 3] = self.box[0]
        return (torch.as_tensor(base, dtype=torch.float64) @ torch.as_tensor(shift)).numpy()

    def _check_channels(self) -> None:
        modalities = self.settings["modalities"]
        if self.scan.channels != len(modalities):
            raise MedsegError(f"{self.scan.path}: has {self.scan.channels} channel(s), the run expects "
                              f"{len(modalities)} ({', '.join(modalities)}); pass scans with those modalities, "
                              "channels on the 4th axis")  # fmt: skip

    def _survey(self) -> None:
        """Gather the moments and the foreground box the run needs (nothing to gather: no survey)."""
        zscored = zscore_channels(self.settings["normalization"])
        crop = bool(self.settings["crop_foreground"])
        if not zscored and not crop:
            return
        box = ForegroundBox() if crop else None
        if self.resampling is None:  # orientation only reorders voxels: gather from the file as it is
            for first, stop in _ranges(self.scan.shape[2], self._survey_depth(self.scan.shape)):
                self._gather(self._checked(self.scan.read(2, first, stop), 2, first, stop), first, zscored, box)
        else:
            for first, stop in _ranges(self.grid_shape[2], self._survey_depth()):
                self._gather(self._grid(first, stop), first, zscored, box)
        if crop:
            self.box = self._crop_box(box, self.resampling is None)

    def _checked(self, block: np.ndarray, axis: int, first: int, stop: int) -> torch.Tensor:
        """``block`` (file slices ``[first, stop)`` of ``axis``) as a tensor, refused when a voxel is not finite."""
        tensor = torch.from_numpy(block)
        if not bool(torch.isfinite(tensor).all()):
            raise MedsegError(f"{self.scan.path}: contains NaN or infinite values (in slices {first}-{stop - 1} of "
                              f"its axis {axis}); fix the scan before predicting")  # fmt: skip
        return tensor

    def _gather(self, block: torch.Tensor, first: int, zscored: Sequence[int], box: Optional[ForegroundBox]) -> None:
        """Fold a block (file order, or the resampled grid) into the moments and the box."""
        for channel in zscored:
            self.moments[channel].add(block[channel])
        if box is not None:
            box.add(block, first)

    def _crop_box(self, box: ForegroundBox, native: bool):
        start, end = box.box()
        if native and end != (0, 0, 0):  # file axes -> RAS axes
            start, end = self._ras_box(start, end)
        if any(e <= s for s, e in zip(start, end)):
            raise MedsegError(f"{self.scan.path}: no nonzero voxels left after --crop-foreground; is the scan empty?")
        return tuple(int(s) for s in start), tuple(int(e) for e in end)

    def _ras_box(self, start, end):
        orientation, ras_start, ras_end = self.orientation, [], []
        for axis, flip in zip(orientation.axes, orientation.flips):
            size = orientation.file_shape[axis]
            ras_start.append(size - end[axis] if flip else start[axis])
            ras_end.append(size - start[axis] if flip else end[axis])
        return ras_start, ras_end

    def _survey_depth(self, shape: Sequence[int] = None) -> int:
        height, width = (shape or self.grid_shape)[:2]
        return max(1, SLAB_BYTES // (4 * self.scan.channels * max(1, height * width)))

    def _ras(self, start: int, stop: int) -> torch.Tensor:
        """RAS slices ``[start, stop)`` of the oriented grid, float32 ``(C, X, Y, n)``."""
        axis, first, last = self.orientation.file_range(start, stop)
        block = self._checked(self.scan.read(axis, first, last), axis, first, last)
        return torch.from_numpy(np.ascontiguousarray(self.orientation.to_ras(block.numpy())))

    def _grid(self, start: int, stop: int) -> torch.Tensor:
        """Slices ``[start, stop)`` of the oriented (and resampled) grid, before cropping and normalisation."""
        if self.resampling is None:
            return self._ras(start, stop)
        resampling = self.resampling
        return sample_range(self._ras, resampling.theta(), resampling.in_shape, resampling.out_shape, start, stop)

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Slices ``[start, stop)`` of the preprocessed image's last axis, float32 ``(C, X, Y, stop - start)``.

        Raises:
            ValueError: when the range is empty or outside ``[0, Z)``.
        """
        depth = self.shape[3]
        if not 0 <= start < stop <= depth:
            raise ValueError(f"ScanStream.read: slices [{start}, {stop}) are outside [0, {depth})")
        (x0, y0, z0), (x1, y1, _) = self.box
        slab = self._grid(z0 + start, z0 + stop)[:, x0:x1, y0:y1]
        slab = slab if slab.is_contiguous() else slab.contiguous()
        return normalize_slab_(slab, self.settings["normalization"], self.moments)

    def slabs(self, depth: int) -> Iterator[Tuple[int, torch.Tensor]]:
        """``(start, slab)`` for consecutive slabs of ``depth`` slices (the last may be thinner), in order.

        Raises:
            ValueError: when ``depth`` is not positive.
        """
        if depth < 1:
            raise ValueError(f"ScanStream.slabs: depth must be at least 1; got {depth}")
        for start, stop in _ranges(self.shape[3], depth):
            yield start, self.read(start, stop)

    def downsampled(self, size: Sequence[int], depth: int = 16) -> torch.Tensor:
        """The preprocessed image resampled to spatial ``size`` as ``F.interpolate(mode="trilinear",
        align_corners=False)`` would resample it whole (to float32 rounding): ``(C, x, y, z)``, in one pass.
        """
        return downsample_stream(self.slabs(depth), self.shape, size)

    def close(self) -> None:
        """Close the scan (its temporary decompressed copy is removed)."""
        self.scan.close()

    def __enter__(self) -> "ScanStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _resampling(orientation: Orientation, settings: dict) -> Optional[Resampling]:
    if settings["spacing"] is None:
        return None
    resampling = spacing_geometry(orientation.affine, orientation.shape, settings["spacing"])
    return None if resampling.unchanged else resampling


def _ranges(total: int, step: int) -> Iterator[Tuple[int, int]]:
    for start in range(0, total, step):
        yield start, min(total, start + step)


def stream_scan(path: Path, settings: dict, folder: Optional[Path] = None) -> ScanStream:
    """Open ``path`` and prepare to preprocess it slab by slab with ``settings``.

    Args:
        path: a ``.nii`` or ``.nii.gz`` scan, 3D or 4D channel-last.
        settings: the run's preprocessing settings (as ``build_preprocessing`` takes them).
        folder: where a ``.nii.gz`` is decompressed (default ``$TMPDIR``).

    Raises:
        MedsegError: the scan cannot be read or decompressed, its header claims more voxels than it holds, it has
            the wrong number of channels, non-finite voxels, or nothing left after ``--crop-foreground``.
    """
    scan = open_scan(path, folder)
    try:
        return ScanStream(scan, settings)
    except BaseException:
        scan.close()
        raise
