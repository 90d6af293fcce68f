"""Atomic file writes: a temporary file in the destination folder, fsync, then ``os.replace``; and atomic
folders: written into a hidden staging sibling, then renamed into place.

A reader sees the old file or the new one, never half of one; an interrupted write leaves the old file intact
and no temporary file behind. Results, checkpoints, run records and predictions are all written this way.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, List, Optional

from medseg_mem.core.errors import MedsegError

TEMP_PART = r"[a-z0-9_]{8}"  # what tempfile.mkstemp puts between its prefix and suffix


class WriteError(MedsegError, OSError):
    """A write that failed (full disk, read-only folder ...): names the file; the previous file is intact.

    It is an :class:`OSError` too, so callers that handle OS errors keep working.
    """


@contextlib.contextmanager
def replacing(
    path: Path, suffix: str = ".tmp", before_replace: Optional[Callable[[Path], None]] = None
) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it replaces ``path`` atomically.

    An existing file's permission bits are kept. If the block raises, the temporary file is removed and
    ``path`` is untouched.

    Args:
        path: the file to create or replace.
        suffix: the temporary file's suffix (some writers choose the format by it).
        before_replace: called with the finished, fsynced temporary file just before it replaces ``path``.

    Raises:
        WriteError: an ``OSError`` while writing (disk full, permission denied ...), naming ``path``.

    Example:
        >>> with replacing(Path("model.pt"), suffix=".pt") as temp:  # doctest: +SKIP
        ...     torch.save(state, temp)
    """
    path = Path(path)
    with _naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
        os.close(handle)
    temp = Path(name)
    try:
        with _naming(path):
            yield temp
            _fsync_file(temp)
            os.chmod(temp, path.stat().st_mode & 0o777 if path.exists() else _default_mode())
            if before_replace is not None:
                before_replace(temp)
            os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Turn an ``OSError`` into a :class:`WriteError` that names ``path`` and says the old file is kept."""
    try:
        yield
    except WriteError:
        raise
    except OSError as error:
        raise write_error(path, error.strerror or str(error)) from error


def write_error(path: Path, reason: str) -> WriteError:
    """The :class:`WriteError` for ``path``: what failed, that the previous file is kept, and the fix."""
    path = Path(path)
    kept = f"the previous {path.name} is unchanged" if path.exists() else f"{path.name} was not created"
    return WriteError(f"cannot write {path}: {reason}; {kept} (free disk space or fix the folder's permissions)")


def remove_stale_temporaries(folder: Path, names: Iterable[str]) -> List[Path]:
    """Remove the temporary files :func:`replacing` left in ``folder`` for the files ``names`` when its process
    was killed (SIGKILL, SIGTERM: no cleanup runs): ``.<name>.<8 random characters><suffix>``. Call it only while
    no other writer of those files runs (hold the folder's :mod:`~medseg_mem.core.files.output_lock`); returns those
    removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    patterns = [re.compile(re.escape(f".{name}.") + TEMP_PART + r"(\..+)?") for name in names]
    stale = sorted(p for p in folder.iterdir() if p.is_file() and any(pat.fullmatch(p.name) for pat in patterns))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def write_text_atomic(path: Path, text: str) -> Path:
    """Replace ``path`` with ``text`` (UTF-8, newlines as given) atomically; parent folders are created."""
    with replacing(path) as temp:
        with open(temp, "w", encoding="utf-8", newline="") as stream:
            stream.write(text)
    return Path(path)


def write_json_atomic(path: Path, data: Any, indent: int = 2) -> Path:
    """Write ``data`` as JSON indented by ``indent`` spaces, atomically."""
    return write_text_atomic(path, json.dumps(data, indent=indent) + "\n")


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


def staging_folder(dest: Path) -> Path:
    """Create and return an empty hidden sibling folder of ``dest`` to write into before :func:`publish_folder`."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; the published folder gets normal permissions
    return staging


def publish_folder(staging: Path, dest: Path) -> None:
    """Move the finished ``staging`` folder to ``dest`` by renaming, replacing what ``dest`` held."""
    dest = Path(dest)
    old = None
    if dest.exists() or dest.is_symlink():
        old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(dest, old)
    os.replace(staging, dest)
    if old is not None:
        remove_path(old)


def remove_path(path: Path) -> None:
    """Delete a folder tree, a file or a link (used for staging leftovers and replaced outputs)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()
