"""A label map written slab by slab: labels (or class probabilities) of the preprocessed grid in, a uint8 NIfTI in
the scan's own grid out, atomically, never the whole volume in memory.

:class:`LabelMapWriter` takes the slabs a network made, in order along the preprocessed grid's last axis, and
undoes the pipeline as ``Invertd`` does: the crop becomes zero padding, ``--spacing`` resampling is undone with
MONAI's sample positions (:mod:`~medseg_mem.data.streaming.sampler`; nearest neighbour on labels, or trilinear on
probabilities then argmax, which is what ``predict`` does for resampled runs today) from the slabs it keeps
(the halo only), and the orientation is undone by index arithmetic. Each finished range of slices goes into an
uncompressed NIfTI whose header nibabel wrote first, exactly as ``nib.save`` writes a label map; for a
``.nii.gz`` target that file lives in ``$TMPDIR`` and is gzip-compressed into the target at the end. The target
appears only on :meth:`LabelMapWriter.commit` (a temporary file beside it, then a rename:
:func:`medseg_mem.core.files.atomic.replacing`); an exception or :meth:`LabelMapWriter.discard` leaves nothing behind.

Example:
    >>> with stream_scan(scan, settings) as stream:  # doctest: +SKIP
    ...     with LabelMapWriter(stream, Path("seg.nii.gz")) as writer:
    ...         for _, slab in stream.slabs(16):
    ...             writer.write(network(slab))
    ...         writer.commit()
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch

from medseg_mem.core.files.atomic import replacing
from medseg_mem.data.streaming.gunzip import PREFIX, remove_temporary
from medseg_mem.data.streaming.sampler import sample_range, support
from medseg_mem.core.errors import MedsegError

EMIT_VOXELS = 2**22  # voxels of the scan's grid finished at a time (4 MiB of labels)
BLOCK_BYTES = 2**26  # bytes of the label file rewritten at a time when slabs cross its last axis
GZIP_LEVEL = 1  # nibabel's default for .nii.gz
COPY_BYTES = 2**22  # bytes compressed at a time


def plain_label_header(header) -> None:
    """Default header marking: uint8 without intensity scaling (``predict`` passes its own, richer one)."""
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(None, None)


class LabelMapWriter:
    """Stream a label map of a :class:`~medseg_mem.data.streaming.preprocess.ScanStream`'s preprocessed grid into
    ``target`` in the scan's own grid.

    Args:
        stream: the scan's stream (its geometry: orientation, resampling, crop box, source file).
        target: the ``.nii`` or ``.nii.gz`` file to create or replace.
        mark_header: called with the copy of the scan's header before it is written (``predict`` marks it as a
            label map); the data type is then forced to uint8.
        probabilities: slabs are class probabilities ``(K, X, Y, n)`` (inverted trilinearly, then argmax) instead
            of labels ``(X, Y, n)``.
        folder: where a ``.nii.gz`` target's uncompressed file waits (default ``$TMPDIR``).

    Raises:
        MedsegError: the target's folder or ``folder`` has no room (naming it, with the fix).
    """

    def __init__(self, stream, target: Path, mark_header: Callable = plain_label_header, probabilities: bool = False,
                 folder: Optional[Path] = None) -> None:  # fmt: skip
        self.stream, self.target, self.probabilities = stream, Path(target), probabilities
        self._stack = contextlib.ExitStack()
        self._raw: Optional[Path] = None
        self.received, self.finished = 0, 0  # preprocessed slices received; scan-grid (RAS) slices written
        self._slabs: List[Tuple[int, torch.Tensor]] = []  # (first slice in the uncropped grid, slab) kept for the halo
        self._channels, self._dtype, self._committed = 1, torch.uint8, False
        compressed = self.target.name.lower().endswith(".gz")
        try:
            self._final = self._stack.enter_context(replacing(self.target, suffix=".tmp.nii.gz" if compressed
                                                              else ".tmp.nii"))  # fmt: skip
            self._raw = _temporary(folder) if compressed else self._final
            self._offset = _write_header(stream.scan, self._raw, mark_header)
        except BaseException as error:
            self._abort(error)
            raise
        self._inverse = stream.resampling.inverse() if stream.resampling is not None else None

    # ----- slabs in
    def write(self, slab: torch.Tensor) -> None:
        """Take the next slab (labels ``(X, Y, n)`` or ``(1, X, Y, n)``; probabilities ``(K, X, Y, n)``).

        Raises:
            ValueError: when the slab does not fit the preprocessed grid or runs past its end.
        """
        slab = torch.as_tensor(slab)
        slab = slab if self.probabilities or slab.ndim == 4 else slab[None]
        channels, width, height, depth = self.stream.shape
        if tuple(slab.shape[1:3]) != (width, height) or self.received + slab.shape[-1] > depth:
            raise ValueError(f"LabelMapWriter.write: slab {tuple(slab.shape)} does not continue the grid "
                             f"{(width, height, depth)} at slice {self.received}")  # fmt: skip
        (x0, y0, z0), _ = self.stream.box
        self._channels, self._dtype = slab.shape[0], slab.dtype
        if (width, height) != tuple(self.stream.grid_shape[:2]):  # the crop undone: zero padding, once a slab
            padded = torch.zeros((slab.shape[0], *self.stream.grid_shape[:2], slab.shape[-1]), dtype=slab.dtype)
            padded[:, x0 : x0 + width, y0 : y0 + height] = slab
            slab = padded
        self._slabs.append((z0 + self.received, slab))
        self.received += slab.shape[-1]
        self._emit(final=False)

    # ----- scan-grid slices out
    def _emit(self, final: bool) -> None:
        shape = self.stream.orientation.shape
        step = max(1, EMIT_VOXELS // max(1, shape[0] * shape[1]))
        while self.finished < shape[2]:
            stop = min(shape[2], self.finished + step)
            if not final and not self._ready(self.finished, stop):
                return
            self._put(self.finished, stop, self._labels(self.finished, stop))
            self.finished = stop
            self._forget()

    def _available(self) -> int:
        """Preprocessed-grid slices known so far (those past the crop are zero, hence known at the end)."""
        (_, _, z0), (_, _, z1) = self.stream.box
        return self.stream.grid_shape[2] if self.received >= z1 - z0 else z0 + self.received

    def _needs(self, start: int, stop: int):
        if self._inverse is None:
            return start, stop
        inverse = self._inverse
        return support(inverse.theta(), inverse.in_shape, inverse.out_shape, start, stop)

    def _ready(self, start: int, stop: int) -> bool:
        return self._needs(start, stop)[1] <= self._available()

    def _forget(self) -> None:
        shape = self.stream.orientation.shape
        low = self._needs(self.finished, min(shape[2], self.finished + 1))[0] if self.finished < shape[2] else 1 << 62
        self._slabs = [(first, slab) for first, slab in self._slabs if first + slab.shape[-1] > low]

    def _grid(self, lo: int, hi: int) -> torch.Tensor:
        """Preprocessed-grid slices ``[lo, hi)`` padded back to the uncropped grid, ``(K, X, Y, n)`` (a view of
        the kept slab when one holds them all)."""
        pieces, at = [], lo
        for first, slab in self._slabs:
            start, stop = max(at, first), min(hi, first + slab.shape[-1])
            if start >= stop:
                continue
            if start > at:
                pieces.append(self._zeros(start - at))
            pieces.append(slab[..., start - first : stop - first])
            at = stop
        if at < hi:
            pieces.append(self._zeros(hi - at))
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)

    def _zeros(self, depth: int) -> torch.Tensor:
        """Slices nobody sent: outside the crop (or not segmented), zero as ``Invertd``'s padding."""
        return torch.zeros((self._channels, *self.stream.grid_shape[:2], depth), dtype=self._dtype)

    def _labels(self, start: int, stop: int) -> np.ndarray:
        """uint8 labels of RAS slices ``[start, stop)`` of the scan's oriented grid, ``(X, Y, n)``."""
        if self._inverse is None:
            values = self._grid(start, stop)
        else:
            inverse, mode = self._inverse, "bilinear" if self.probabilities else "nearest"
            values = sample_range(lambda lo, hi: self._grid(lo, hi).float(), inverse.theta(), inverse.in_shape,
                                  inverse.out_shape, start, stop, mode)  # fmt: skip
        labels = values.argmax(dim=0) if self.probabilities else values[0]
        return labels.to(torch.uint8).numpy()

    def _put(self, start: int, stop: int, labels: np.ndarray) -> None:
        """Write RAS slices ``[start, stop)`` into the uncompressed file, in the scan's voxel order."""
        orientation = self.stream.orientation
        axis, first, last = orientation.file_range(start, stop)
        block = orientation.to_file(labels)
        try:
            with open(self._raw, "r+b") as out:
                _put_block(out, self._offset, orientation.file_shape, axis, first, last, block)
        except OSError as error:
            raise _no_room(self._raw, error) from error

    # ----- the end
    def commit(self) -> Path:
        """Finish the file and move it into place; return the target.

        Raises:
            MedsegError: when slices are missing (the network's slabs did not cover the grid) or a write fails.
        """
        if self.received != self.stream.shape[3]:
            error = MedsegError(f"{self.target}: got {self.received} of {self.stream.shape[3]} slices; not written")
            self._abort(error)
            raise error
        try:
            self._emit(final=True)
            if self._raw != self._final:
                _compress(self._raw, self._final)
        except BaseException as error:
            self._abort(error)
            raise
        remove_temporary(self._raw if self._raw != self._final else None)
        self._committed = True
        self._stack.close()  # replacing(): fsync, then rename onto the target
        return self.target

    def discard(self) -> None:
        """Drop everything written so far; the target is untouched."""
        self._committed = True  # nothing more to do on exit
        self._abort(MedsegError("discarded"))

    def _abort(self, error: BaseException) -> None:
        if self._raw is not None and self._raw != getattr(self, "_final", None):
            remove_temporary(self._raw)
        self._stack.__exit__(type(error), error, error.__traceback__)
        self._stack = contextlib.ExitStack()  # closed: a second abort does nothing

    def __enter__(self) -> "LabelMapWriter":
        return self

    def __exit__(self, kind, error, trace) -> None:
        if not self._committed:  # an error, or no commit: nothing is left behind
            self._abort(error or MedsegError("not committed"))


def _temporary(folder: Optional[Path]) -> Path:
    folder = Path(folder or tempfile.gettempdir())
    try:
        handle, name = tempfile.mkstemp(prefix=PREFIX, suffix=".nii", dir=folder)
    except OSError as error:
        raise _no_room(folder / PREFIX, error) from error
    os.close(handle)
    return Path(name)


def _write_header(scan, raw: Path, mark_header: Callable) -> int:
    """Write the label map's header and zero voxels into ``raw`` as ``nib.save`` writes it; the data offset."""
    import nibabel as nib

    header = scan.original_header.copy()
    image = nib.Nifti1Image(np.broadcast_to(np.uint8(0), scan.shape), None, header=header)
    mark_header(image.header)
    image.header.set_data_dtype(np.uint8)
    try:
        nib.save(image, str(raw))
    except OSError as error:
        raise _no_room(raw, error) from error
    return int(nib.load(str(raw)).dataobj.offset)


def _put_block(out, offset: int, shape, axis: int, first: int, last: int, block: np.ndarray) -> None:
    """Write ``block`` (file order) at slices ``[first, last)`` of file ``axis`` of a uint8 F-order volume."""
    plane = shape[0] * shape[1]
    if axis == 2:
        out.seek(offset + first * plane)
        out.write(np.ascontiguousarray(block.transpose(2, 1, 0)))  # F order: the first axis runs fastest
        return
    step = max(1, BLOCK_BYTES // max(1, plane))
    for k0 in range(0, shape[2], step):
        k1 = min(shape[2], k0 + step)
        out.seek(offset + k0 * plane)
        data = np.frombuffer(out.read((k1 - k0) * plane), dtype=np.uint8).reshape(shape[:2] + (k1 - k0,), order="F")
        data = data.copy(order="F")
        index = [slice(None)] * 3
        index[axis] = slice(first, last)
        data[tuple(index)] = block[..., k0:k1]
        out.seek(offset + k0 * plane)
        out.write(data.tobytes(order="F"))


def _compress(raw: Path, target: Path) -> None:
    """gzip ``raw`` into ``target`` a block at a time."""
    with open(raw, "rb") as source, open(target, "wb") as sink:
        with gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=GZIP_LEVEL, mtime=0) as packed:
            shutil.copyfileobj(source, packed, COPY_BYTES)


def _no_room(path: Path, error: OSError) -> MedsegError:
    reason = (error.strerror or str(error)).lower()
    return MedsegError(f"cannot write the label map into {Path(path).parent} ({reason}); free space there or set "
                       "TMPDIR to a folder with room for it")  # fmt: skip
