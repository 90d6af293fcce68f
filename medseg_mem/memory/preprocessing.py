"""What ``predict``'s whole-scan preprocessing holds at its peak: the in-memory path loads a scan whole, orients it,
resamples and crops it if the run did, and normalises it (:func:`~medseg_mem.data.transforms.build_preprocessing`,
one step at a time: each step's input is freed once its output exists). On a deep scan that, not the network, is
the process's peak: ``patch`` on a 512x512x300 int16 scan held 1.14 GiB while loading it and planned 0.78 GiB for
its inference alone (issue 24).

The model counts the full-size arrays each step holds, from the scan's header (:class:`~medseg_mem.data.headers.
ScanLayout`) and the run's settings; ``N`` is the voxels of all channels, the image is float32 from the load on::

    load           value + 4N (+ value for integer data: its conversion keeps one more copy; + the stored read for
                   a header that scales its values), at least the decompressed read of a .nii.gz (2 x stored);
                   a .nii is memory-mapped (its pages count once read)
    orientation    4N, + 4N when the stored axes are not RAS (a flipped copy)
    resampling     4N + 28 bytes per output voxel (the grid, 12, and affine_grid's homogeneous base, 16), at least
                   the grid and the output (12 + 4C per output voxel); the output is what stays
    crop           the image + 2 bytes per voxel (the foreground masks); the crop is a view of the image
    normalisation  the image + 30 bytes per voxel of one slab (in place, a slab of slices at a time)

plus 4 MiB for the pipeline's small allocations (up to 3 MiB measured on a process's first scan).

``value`` is the array nibabel returns (stored bytes, or 8 bytes per voxel for a header that scales its values).
Each coefficient was read off the transforms and measured on this stack (numpy 2.4, nibabel 5, MONAI 1.6): int16
and uint8 loads 8 and 6 bytes per voxel, float32 8, float64 (.nii.gz) 16, int16 scaled by its header 16; a
flipped orientation 8; resampling 28 per output voxel; crop 6; normalisation 30 per slab voxel.
``tests/test_preprocessing_plan.py`` measures the real pipeline against the model on ten layouts of 6.3 M voxels
(+1.2 % to +8.7 % over three runs; without the 4 MiB, -5.6 % to +7.5 %), so a library that copies more is caught.
A scan read with ITK adds the library itself (:data:`ITK_LIBRARY_BYTES`, loaded on its first read and kept: counted
for every scan, a bound after the first).

Example:
    >>> from medseg_mem.data.headers import ScanLayout
    >>> ct = ScanLayout((1, 512, 512, 300), 2, 2, True, False, True, (0.8, 0.8, 1.5), (512, 512, 300))
    >>> settings = {"reader": "nibabel", "spacing": None, "crop_foreground": False}
    >>> preprocessing_bytes(ct, settings) / 2**20
    604.0
"""

from __future__ import annotations

import math
from typing import Sequence

FLOAT_BYTES = 4
RESAMPLE_BYTES = 28  # per output voxel: affine_grid's grid (12) beside its homogeneous base grid (16)
GRID_BYTES = 12  # per output voxel: the grid grid_sample reads, beside the output it writes
CROP_MASK_BYTES = 2  # per voxel: CropForegroundd's selection masks
SLAB_TEMPORARY_BYTES = 30  # per voxel of one normalisation slab: masks, selections, float64 copies (29-30 measured)
SMALL_ALLOCATIONS = 4 * 2**20  # the pipeline's small arrays and objects (0-3 MiB measured, most on a first scan)
ITK_LIBRARY_BYTES = 288 * 2**20  # ITK's libraries, loaded on the first read with it (261 MiB measured)


def preprocessing_bytes(layout, settings: dict) -> int:
    """The peak bytes ``predict``'s in-memory preprocessing of a scan stored as ``layout`` holds beyond the process
    before it (the networks and the interpreter), with the run's preprocessing ``settings``.

    Args:
        layout: a :class:`~medseg_mem.data.headers.ScanLayout` (the header's shape, types, file and axes).
        settings: the run's preprocessing settings (``reader``, ``spacing``, ``crop_foreground``).
    """
    channels, grid = layout.shape[0], tuple(layout.spatial)
    image = FLOAT_BYTES * channels * math.prod(grid)
    steps = [load_bytes(layout), image * (2 if layout.reoriented else 1)]
    if settings.get("spacing") is not None:
        grid = preprocessed_shape(layout, settings)[1:]
        steps.append(image + resampling_bytes(channels) * math.prod(grid))
        image = FLOAT_BYTES * channels * math.prod(grid)
    if settings.get("crop_foreground"):
        steps.append(image + CROP_MASK_BYTES * channels * math.prod(grid))
    steps.append(image + SLAB_TEMPORARY_BYTES * slab_voxels(grid))
    return int(max(steps)) + SMALL_ALLOCATIONS + (ITK_LIBRARY_BYTES if settings.get("reader") == "itk" else 0)


def preprocessed_shape(layout, settings: dict) -> tuple:
    """``(C, X, Y, Z)`` of the image the networks segment: the scan's grid in RAS order, resampled as the run does
    (a crop is not known before the voxels are read: the whole grid is planned).

    Example:
        >>> from medseg_mem.data.headers import ScanLayout
        >>> scan = ScanLayout((1, 100, 80, 40), 2, 2, True, True, True, (1.0, 1.0, 3.0), (100, 80, 40))
        >>> preprocessed_shape(scan, {"spacing": None}), preprocessed_shape(scan, {"spacing": [2.0, 2.0, 1.5]})
        ((1, 100, 80, 40), (1, 50, 40, 80))
    """
    grid = tuple(layout.spatial)
    if settings.get("spacing") is not None:
        grid = resampled_shape(grid, layout.spacing, settings["spacing"])
    return (int(layout.shape[0]), *grid)


def restore_bytes(layout, settings: dict, classes: int) -> int:
    """The peak bytes a resampling run's ``predict`` holds mapping its ``classes`` probability maps back onto the
    scan's grid (``restore_grid``: ``Invertd`` resamples them trilinearly, un-orients them, then the argmax), beyond
    the process and the networks; 0 for a run that does not resample (its uint8 label map is inverted, 2 bytes a
    voxel, under the preprocessing's peak).

    The maps on the network's grid stay held throughout (``4 K`` per voxel there); on the scan's grid the largest
    of: the resampling (its grid beside ``affine_grid``'s base, 28 bytes a voxel, or the grid and the output,
    ``12 + 4 K``), the un-oriented copy beside the resampled maps (``8 K``), the argmax (``4 K + 9``). Measured:
    the cascade (3 classes) held 28 bytes a scan voxel above its maps.

    Example:
        >>> from medseg_mem.data.headers import ScanLayout
        >>> scan = ScanLayout((1, 100, 100, 50), 2, 2, True, True, True, (1.0, 1.0, 2.0), (100, 100, 50))
        >>> restore_bytes(scan, {"spacing": [1.0, 1.0, 1.0]}, 3) // 2**20, restore_bytes(scan, {"spacing": None}, 3)
        (28, 0)
    """
    if settings.get("spacing") is None:
        return 0
    grid, voxels = math.prod(preprocessed_shape(layout, settings)[1:]), math.prod(layout.spatial)
    k = int(classes)
    per_voxel = max(resampling_bytes(k), 2 * FLOAT_BYTES * k, FLOAT_BYTES * k + 9)
    return FLOAT_BYTES * k * grid + per_voxel * voxels + SMALL_ALLOCATIONS


def resampling_bytes(channels: int) -> int:
    """Bytes per output voxel ``Spacingd``/``Invertd`` hold resampling ``channels`` float32 maps: ``affine_grid``'s
    grid beside its homogeneous base, or the grid beside the output, the larger."""
    return max(RESAMPLE_BYTES, GRID_BYTES + FLOAT_BYTES * int(channels))


def load_bytes(layout) -> int:
    """The load's peak: nibabel's array (``value``), its float32 copy and, for integers, one more ``value`` copy
    while converting (a scaled file: its stored read too); at least a ``.nii.gz``'s decompression (the stored
    array twice)."""
    voxels = math.prod(layout.shape)
    value = layout.value_itemsize * voxels
    stored = layout.stored_itemsize * voxels * (2 if layout.compressed else 1)  # the read (decompressed: twice)
    converting = value + FLOAT_BYTES * voxels + (value if layout.integer else 0)
    if layout.value_itemsize != layout.stored_itemsize:  # scaled: the stored array is still held while converting
        converting += stored
    return max(converting, stored)


def resampled_shape(spatial: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple:
    """The grid ``Spacingd`` resamples ``spatial`` (RAS order, ``spacing`` mm) onto at ``target`` mm, to the voxel.

    Example:
        >>> resampled_shape((256, 256, 100), (1.0, 1.0, 2.0), (2.0, 2.0, 1.0))
        (128, 128, 200)
    """
    return tuple(max(1, round(n * float(s) / float(t))) for n, s, t in zip(spatial, spacing, target))


def slab_voxels(grid: Sequence[int]) -> int:
    """Voxels of one channel's normalisation slab (:func:`~medseg_mem.data.normalize.slab_views`) on a ``(X, Y, Z)``
    grid: whole slices, about ``CHUNK_VOXELS``, at most the channel."""
    from medseg_mem.data.normalize import CHUNK_VOXELS

    plane = int(grid[0]) * int(grid[1])
    return plane * min(int(grid[2]), max(1, CHUNK_VOXELS // plane))


def assumed_layout(shape: Sequence[int], compressed: bool = True):
    """The layout ``plan`` assumes for a scan it knows only by its shape: float32 or integer (the two load at 8 bytes
    per voxel), not stored in RAS order (the usual LPS of scanners: orientation copies), 1 mm voxels."""
    from medseg_mem.data.headers import ScanLayout

    channels, *spatial = (int(s) for s in shape)
    return ScanLayout((channels, *spatial), 4, 4, False, compressed, True, (1.0, 1.0, 1.0), tuple(spatial))
