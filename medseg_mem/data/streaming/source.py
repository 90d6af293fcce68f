"""A NIfTI scan read by slabs: nibabel's array proxy sliced, never the whole volume.

:func:`open_scan` reads the header, checks it (3D, or 4D with channels last; a file that holds every voxel
its header claims), decompresses a ``.nii.gz`` into a temporary ``.nii`` first
(:mod:`~medseg_mem.data.streaming.gunzip`) and corrects the header as MONAI's ``NibabelReader`` does
(``correct_nifti_header_if_necessary``), so the affine is the one ``LoadImaged`` puts in the image's metadata.
:meth:`ScanFile.read` returns any range of slices along one file axis as float32 ``(C, X, Y, Z)``, scaled by
``scl_slope``/``scl_inter`` exactly as ``np.asanyarray(img.dataobj).astype(np.float32)`` scales the whole (the
proxy's scaling is per voxel, so a slab comes out as the same slab of the whole). Slabs along the last axis are
one contiguous read; along another axis the file is read in blocks of at most :data:`BLOCK_BYTES`.

Example:
    >>> with open_scan(Path("ct.nii.gz")) as scan:  # doctest: +SKIP
    ...     first = scan.read(axis=2, start=0, stop=16)  # (C, X, Y, 16) float32
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from medseg_mem.data.streaming.gunzip import decompress_to_temporary, remove_temporary
from medseg_mem.core.errors import MedsegError

BLOCK_BYTES = 2**26  # raw bytes read at a time when slicing across the file's last axis
SPATIAL_DIMS = (3, 4)


class ScanFile:
    """An opened scan: header, MONAI's affine, spatial shape and channels, voxels read on demand.

    Use :func:`open_scan`; close it (or use it as a context manager) to remove a temporary decompressed copy.

    Args:
        image: the nibabel image of the uncompressed file (header corrected as MONAI corrects it).
        path: the scan as the user named it (messages name it).
        temporary: the decompressed copy to remove on close, if any.
        original_header: the header as the file holds it (before MONAI's correction), the label map's template.
    """

    def __init__(self, image, path: Path, temporary: Optional[Path] = None, original_header=None) -> None:
        self.image = image
        self.original_header = original_header if original_header is not None else image.header.copy()
        self.path = Path(path)
        self.temporary = temporary
        full = tuple(int(s) for s in image.shape)
        self.shape: Tuple[int, int, int] = full[:3]
        self.channels = full[3] if len(full) == 4 else 1
        self.affine = np.array(image.affine, dtype=np.float64, copy=True)
        self._cleanup = weakref.finalize(self, remove_temporary, temporary)

    def read(self, axis: int, start: int, stop: int) -> np.ndarray:
        """Slices ``[start, stop)`` along spatial file ``axis`` as float32 ``(C, ...)`` in file order.

        Raises:
            MedsegError: when the file cannot be read any more (removed or cut short while reading).
        """
        if axis == 2:
            return self._block(axis, start, stop, 0, self.shape[2])
        shape = [self.channels, *self.shape]
        shape[1 + axis] = stop - start
        out = np.empty(shape, dtype=np.float32)
        plane = self.image.dataobj.dtype.itemsize * self.channels * max(1, self.shape[0] * self.shape[1])
        step = max(1, BLOCK_BYTES // plane)
        for first in range(0, self.shape[2], step):
            out[..., first : first + step] = self._block(axis, start, stop, first, min(self.shape[2], first + step))
        return out

    def _block(self, axis: int, start: int, stop: int, first: int, last: int) -> np.ndarray:
        """File slices ``[start, stop)`` of ``axis`` and ``[first, last)`` of the last axis, channels first."""
        index = [slice(None)] * len(self.image.shape)
        index[axis] = slice(start, stop)
        if axis != 2:
            index[2] = slice(first, last)
        try:
            block = np.asanyarray(self.image.dataobj[tuple(index)]).astype(np.float32, copy=False)
        except (OSError, ValueError) as error:
            raise MedsegError(f"{self.path}: cannot be read any more ({error}); was it moved or cut short?") from error
        block = block if block.flags.writeable else block.copy()  # float32 voxels come as a read-only buffer
        return np.moveaxis(block, -1, 0) if block.ndim == 4 else block[None]

    def close(self) -> None:
        """Remove the temporary decompressed copy, if any."""
        self._cleanup()

    def __enter__(self) -> "ScanFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_scan(path: Path, folder: Optional[Path] = None) -> ScanFile:
    """Open ``path`` (``.nii`` or ``.nii.gz``, 3D or 4D channel-last) for reading by slabs.

    Args:
        path: the scan.
        folder: where a ``.nii.gz`` is decompressed (default ``tempfile.gettempdir()``, i.e. ``$TMPDIR``).

    Raises:
        MedsegError: naming the file: it cannot be opened or parsed as NIfTI, has neither 3 nor 4 dimensions,
            its header claims more voxel bytes than the file holds (refused before any voxel is read), or its
            decompression fails (:func:`~medseg_mem.data.streaming.gunzip.decompress_to_temporary`).
    """
    path = Path(path)
    image = _image(path)
    header = image.header
    shape = tuple(int(s) for s in header.get_data_shape())
    if len(shape) not in SPATIAL_DIMS:
        raise MedsegError(f"{path}: has {len(shape)} dimensions ({'x'.join(map(str, shape))}); expected a 3D scan "
                          "(or 4D with channels last)")  # fmt: skip
    offset, claimed = int(image.dataobj.offset), voxel_bytes(header)  # the image's header has vox_offset reset
    temporary = None
    if _compressed(path):
        plane = header.get_data_dtype().itemsize * shape[0] * shape[1]
        temporary = decompress_to_temporary(path, plane, offset, folder)
    try:
        _check_size(path, os.path.getsize(temporary or path) - offset, claimed)
        return ScanFile(_load(temporary or path, path), path, temporary, header.copy())
    except BaseException:
        remove_temporary(temporary)
        raise


def voxel_bytes(header) -> int:
    """Bytes of voxel data a header declares."""
    count = 1
    for extent in header.get_data_shape():
        count *= int(extent)
    return count * header.get_data_dtype().itemsize


def _compressed(path: Path) -> bool:
    with open(path, "rb") as stream:
        return stream.read(2) == b"\x1f\x8b"


def _check_size(path: Path, present: int, claimed: int) -> None:
    if present < claimed:
        raise MedsegError(f"{path}: its header claims {claimed} bytes of voxels but the file holds {max(0, present)}; "
                          "the file is truncated or its header is wrong, export the scan again")  # fmt: skip


def _image(path: Path):
    """nibabel's image of ``path``: its header read, its voxels not."""
    import nibabel as nib

    try:
        return nib.load(str(path))
    except OSError as error:
        raise MedsegError(f"{path}: cannot be read ({(error.strerror or str(error)).lower()})") from error
    except Exception as error:  # noqa: BLE001 - nibabel reports a bad header in many exception types
        raise MedsegError(f"{path}: cannot be read as NIfTI ({error}); re-export or replace the file") from error


def _load(uncompressed: Path, shown: Path):
    """nibabel's image of the uncompressed file, read without a memory map, header corrected as MONAI does."""
    import nibabel as nib
    from monai.data.utils import correct_nifti_header_if_necessary

    try:
        return correct_nifti_header_if_necessary(nib.load(str(uncompressed), mmap=False))
    except Exception as error:  # noqa: BLE001 - as _image
        raise MedsegError(f"{shown}: cannot be read as NIfTI ({error}); re-export or replace the file") from error
