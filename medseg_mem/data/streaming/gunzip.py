"""A ``.nii.gz`` scan decompressed into a temporary ``.nii`` in one streaming pass, in bounded memory.

The compressed file is read in blocks of :data:`BLOCK_BYTES` and inflated by ``zlib`` (gzip members one after
another, each checked against its CRC), and what comes out is written straight into a temporary file in
``$TMPDIR`` (``tempfile``'s folder, or the one given). At most a block of each is held. A stream that ends early,
a corrupt stream and a full disk each end in one :class:`~medseg_mem.core.errors.MedsegError` line naming the file (and
where it broke) or the folder; the temporary file is removed then.

Example:
    >>> copy = decompress_to_temporary(Path("ct.nii.gz"), slice_bytes=2 * 512**2, data_offset=352)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import tempfile
import zlib
from pathlib import Path
from typing import BinaryIO, Optional

from medseg_mem.core.errors import MedsegError

BLOCK_BYTES = 2**20  # compressed bytes read at a time (the inflated block is at most a few times that)
GZIP_WINDOW = 16 + zlib.MAX_WBITS  # gzip header and trailer, CRC checked
PREFIX = "medseg-mem-scan-"


def gibibytes(size: int) -> str:
    """``size`` bytes as ``"1.23 GiB"``."""
    return f"{size / 2**30:.2f} GiB"


def decompress_to_temporary(path: Path, slice_bytes: int, data_offset: int, folder: Optional[Path] = None) -> Path:
    """Inflate the gzip file ``path`` into a new temporary file and return its path (the caller removes it).

    Args:
        path: the ``.nii.gz`` scan.
        slice_bytes: bytes of one slice along the file's last axis (for the message of a stream that breaks).
        data_offset: where the voxels start (``vox_offset``), likewise.
        folder: where the temporary file goes (default: ``tempfile.gettempdir()``, which honours ``TMPDIR``).

    Raises:
        MedsegError: the stream ends early or is corrupt (naming the file, the byte and the slice where it broke),
            or the folder has no room (naming the folder, with the fix); nothing is left behind.
    """
    folder = Path(folder or tempfile.gettempdir())
    try:
        handle, name = tempfile.mkstemp(prefix=PREFIX, suffix=".nii", dir=folder)
    except OSError as error:
        raise _no_room(path, folder, error) from error
    temporary = Path(name)
    try:
        with open(handle, "wb") as out, open(path, "rb") as source:
            _inflate(path, source, out, folder, slice_bytes, data_offset)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def _inflate(path: Path, source: BinaryIO, out, folder: Path, slice_bytes: int, data_offset: int) -> None:
    """Copy the inflated gzip members of ``source`` into ``out``, :data:`BLOCK_BYTES` at most at a time."""
    inflater, read, written, clean = zlib.decompressobj(GZIP_WINDOW), 0, 0, False
    for block in iter(lambda: source.read(BLOCK_BYTES), b""):
        read += len(block)
        while True:
            try:
                data = inflater.decompress(block, BLOCK_BYTES)  # bounded: zeros inflate a thousandfold
            except zlib.error as error:
                raise _broken(path, f"is corrupt ({error})", read, written, slice_bytes, data_offset) from error
            written += _write(out, data, path, folder)
            block, clean = inflater.unconsumed_tail, inflater.eof
            if inflater.eof:  # the next gzip member, if any, starts in what is left
                block, inflater = inflater.unused_data, zlib.decompressobj(GZIP_WINDOW)
            if not block and (clean or len(data) < BLOCK_BYTES):  # input used up, no output pending
                break
    if not clean:
        raise _broken(path, "ends early (the file is truncated)", read, written, slice_bytes, data_offset)


def _write(out, data: bytes, path: Path, folder: Path) -> int:
    try:
        out.write(data)
    except OSError as error:
        raise _no_room(path, folder, error) from error
    return len(data)


def _broken(path: Path, what: str, read: int, written: int, slice_bytes: int, data_offset: int) -> MedsegError:
    where = f"after {read} compressed and {written} decompressed bytes"
    if written >= data_offset and slice_bytes > 0:
        where += f", in slab {(written - data_offset) // slice_bytes} along the last axis"
    else:
        where += ", in its header"
    return MedsegError(f"{path}: the gzip stream {what} {where}; copy or export the scan again")


def _no_room(path: Path, folder: Path, error: OSError) -> MedsegError:
    reason = (error.strerror or str(error)).lower()
    return MedsegError(f"cannot decompress {path} into {folder} ({reason}); free space there or set TMPDIR to a "
                       "folder with room for the uncompressed scan")  # fmt: skip


def remove_temporary(path: Optional[Path]) -> None:
    """Remove a temporary file made here (nothing when ``path`` is None or already gone)."""
    if path is not None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
