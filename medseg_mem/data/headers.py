"""Checks on a NIfTI header before any voxel is read: the number of dimensions and the memory the data needs.

A corrupt or hostile header can claim any size (a NIfTI-2 header 100000 x 100000 x 100000); reading it would
end in a ``MemoryError`` that names neither the dimensions nor the memory. The header alone tells both.
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class ScanLayout:
    """How a NIfTI scan is stored, from its header alone: what the whole-scan preprocessing's memory depends on
    (:func:`medseg_mem.memory.preprocessing.preprocessing_bytes`).

    Args:
        shape: ``(C, X, Y, Z)`` as stored (channels last in the file, first here).
        stored_itemsize: bytes per stored value (``int16``: 2).
        value_itemsize: bytes per value as nibabel returns it: the stored type's, or 8 when the header scales the
            values (``scl_slope``/``scl_inter``: nibabel returns floats).
        integer: the values nibabel returns are integers (converting them to float32 makes one more copy).
        compressed: ``.nii.gz`` (nibabel decompresses the whole array into memory; ``.nii`` is memory-mapped).
        reoriented: the stored axes are not RAS, so ``Orientationd`` flips or permutes a copy.
        spacing: voxel size in mm, in the RAS axis order.
        spatial: ``(X, Y, Z)`` in the RAS axis order.
    """

    shape: Tuple[int, int, int, int]
    stored_itemsize: int
    value_itemsize: int
    integer: bool
    compressed: bool
    reoriented: bool
    spacing: Tuple[float, float, float]
    spatial: Tuple[int, int, int]


def scan_layout(path: Path) -> Optional[ScanLayout]:
    """The :class:`ScanLayout` of a 3D or 4D (channel-last) NIfTI from its header (no voxel is read); ``None`` when
    the header cannot be read."""
    import nibabel as nib
    import numpy as np

    from medseg_mem.data.transforms import ras_order, ras_spacing

    try:
        image = nib.load(str(path))
    except Exception:  # noqa: BLE001 - unreadable files are reported by the reader, with its reason
        return None
    dims = tuple(int(s) for s in image.header.get_data_shape())
    if len(dims) not in SPATIAL_DIMS:
        return None
    stored = np.dtype(image.header.get_data_dtype())
    # nibabel moves the header's scl_slope/scl_inter onto the data proxy: a scaled file reads as float64
    scaled = (float(getattr(image.dataobj, "slope", 1.0)), float(getattr(image.dataobj, "inter", 0.0))) != (1.0, 0.0)
    in_ras = (nib.orientations.io_orientation(np.asarray(image.affine, dtype=np.float64)) == [[0, 1], [1, 1], [2, 1]])
    return ScanLayout(
        shape=(dims[3] if len(dims) > 3 else 1, *dims[:3]), stored_itemsize=stored.itemsize,
        value_itemsize=8 if scaled else stored.itemsize, integer=stored.kind in "iub" and not scaled,
        compressed=str(path).endswith(".gz"), reoriented=not bool(in_ras.all()),
        spacing=tuple(ras_spacing(image.affine)), spatial=tuple(int(n) for n in ras_order(dims[:3], image.affine)),
    )  # fmt: skip
