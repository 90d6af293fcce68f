"""Checks on a NIfTI header before any voxel is read: the number of dimensions and the memory the data needs.

A corrupt or hostile header can claim any size (a NIfTI-2 header 100000 x 100000 x 100000); reading it would
end in a ``MemoryError`` that names neither the dimensions nor the memory. The header alone tells both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from medseg_mem.core import machine
from medseg_mem.core.units import format_bytes

FLOAT_BYTES = 4  # images are loaded as float32
SPATIAL_DIMS = (3, 4)  # a 3D volume, or 4D channel-last


def header_shape(path: Path) -> Tuple[int, ...]:
    """The data shape a NIfTI header declares, read without the voxels (``()`` when nibabel cannot read it)."""
    import nibabel as nib

    try:
        return tuple(int(s) for s in nib.load(str(path)).header.get_data_shape())
    except Exception:  # noqa: BLE001 - unreadable files are reported by the reader, with its reason
        return ()


def header_problems(path: Path, rel: str, available: Optional[Callable[[], int]] = None) -> List[str]:
    """One message per problem of the header of ``path`` (shown as ``rel``); empty when it may be read.

    Args:
        path: the NIfTI file.
        rel: its name in messages (relative to the task folder).
        available: returns the bytes of memory free for reading it (default: the available RAM).
    """
    shape = header_shape(path)
    if not shape:
        return []
    size = "x".join(map(str, shape))
    if len(shape) not in SPATIAL_DIMS:
        return [f"{rel}: has {len(shape)} dimensions ({size}); expected a 3D or 4D (channel-last) image"]
    need = FLOAT_BYTES
    for extent in shape:
        need *= extent
    free = available() if available is not None else _available_ram()
    if need > free:
        return [f"{rel}: its header declares {size} voxels, {format_bytes(need)} as float32, more than the "
                f"{format_bytes(free)} of memory available; the header is corrupt or the image too large to read"]
    return []


def channel_file_problems(channel_files: Sequence[Tuple[Path, str]]) -> List[str]:
    """One message per channel file (nnU-Net v2: one 3D file per channel, ``(path, shown name)``) that is not 3D
    or whose grid (shape, affine) differs from the first channel's; empty when they stack into one image."""
    shapes = [(header_shape(path), rel) for path, rel in channel_files]
    problems = [f"{rel}: has {len(shape)} dimensions ({_size(shape)}); an nnU-Net channel file holds one 3D volume"
                for shape, rel in shapes if shape and len(shape) != 3]  # fmt: skip
    if problems or len(channel_files) < 2:
        return problems
    (first, first_rel), first_affine = shapes[0], _affine(channel_files[0][0])
    for (shape, rel), (path, _) in zip(shapes[1:], channel_files[1:]):
        if shape and first and shape != first:
            problems.append(f"{rel}: shape {_size(shape)} differs from {first_rel} {_size(first)}; every channel of "
                            "a case must share one voxel grid")  # fmt: skip
        elif not _same_affine(_affine(path), first_affine):
            problems.append(f"{rel}: affine differs from {first_rel}'s; every channel of a case must share one voxel "
                            "grid (resample it onto the first channel)")  # fmt: skip
    return problems


def _affine(path: Path):
    """The affine of a NIfTI header (``None`` when nibabel cannot read it: the reader says why)."""
    import nibabel as nib

    try:
        return nib.load(str(path)).affine
    except Exception:  # noqa: BLE001 - unreadable files are reported by the reader, with its reason
        return None


def _same_affine(affine, reference) -> bool:
    import numpy as np

    return affine is None or reference is None or bool(np.allclose(affine, reference, rtol=1e-4, atol=1e-3))


def _size(shape: Tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _available_ram() -> int:
    """Bytes of RAM available now (``MemAvailable``)."""
    return machine.available_ram()
