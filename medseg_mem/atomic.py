"""Atomic file writes: a temporary file in the destination folder, fsync, then ``os.replace``.

A reader sees the old file or the new one, never half of one; an interrupted write leaves the old file intact
and no temporary file behind. Results, checkpoints, run records and predictions are all written this way.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def replacing(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it replaces ``path`` atomically.

    An existing file's permission bits are kept. If the block raises, the temporary file is removed and
    ``path`` is untouched.

    Example:
        >>> with replacing(Path("model.pt"), suffix=".pt") as temp:  # doctest: +SKIP
        ...     torch.save(state, temp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    temp = Path(name)
    try:
        yield temp
        _fsync_file(temp)
        os.chmod(temp, path.stat().st_mode & 0o777 if path.exists() else _default_mode())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def write_text_atomic(path: Path, text: str) -> Path:
    """Replace ``path`` with ``text`` (UTF-8, newlines as given) atomically; parent folders are created."""
    with replacing(path) as temp:
        with open(temp, "w", encoding="utf-8", newline="") as stream:
            stream.write(text)
    return Path(path)


def write_json_atomic(path: Path, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    return write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as stream:
        os.fsync(stream.fileno())


def _default_mode() -> int:
    """The permission bits a new file gets under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable where the platform allows fsync on a folder."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
