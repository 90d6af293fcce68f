"""Output locations checked before the long work starts: a folder that cannot be written fails in a second,
not after hours of training.

A folder counts as writable when it can be created (with its parents) and a temporary file can be created and
removed in it: the same operations the atomic writers of :mod:`medseg_mem.core.files.atomic` use. This catches read-only
and foreign-owned folders, full disks that refuse new files, and a file standing where a folder should be.

Example:
    >>> check_output_folder(Path("medseg-work/runs"), "--runs")  # doctest: +SKIP
    >>> check_output_file(Path("medseg-work/results.csv"), "--results")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

from medseg_mem.core.errors import MedsegError


def check_output_folder(folder: Path, option: str) -> Path:
    """Create ``folder`` if missing and prove a file can be written in it.

    Args:
        folder: where the command will write.
        option: the option that named it (``--runs``, ``--out`` ...), for the message.

    Raises:
        MedsegError: one line naming the option, the folder, the reason and the fix.
    """
    folder = Path(folder)
    blocker = _file_in_the_way(folder)
    if blocker == folder:
        raise MedsegError(f"{option} {folder}: is a file, not a folder; pass a folder path")
    if blocker is not None:
        raise MedsegError(f"{option} {folder}: {blocker} is a file, not a folder; pass another {option}")
    try:
        _probe(folder)
    except OSError as error:
        raise MedsegError(f"{option} {folder}: cannot write there ({_reason(error)}); "
                          f"fix the folder's permissions or pass another {option}") from error
    return folder


def check_output_file(path: Path, option: str) -> Path:
    """The file at ``path`` can be (re)written atomically: it is not a folder and its folder is writable.

    Raises:
        MedsegError: one line naming the option, the path and the fix.
    """
    path = Path(path)
    if path.is_dir():
        raise MedsegError(f"{option} {path}: is a folder, not a file; pass the path of a file")
    blocker = _file_in_the_way(path.parent)
    if blocker is not None:
        raise MedsegError(f"{option} {path}: {blocker} is a file, not a folder; pass another {option}")
    try:
        _probe(path.parent)
    except OSError as error:
        raise MedsegError(f"{option} {path}: cannot write in {path.parent} ({_reason(error)}); "
                          f"fix the folder's permissions or pass another {option}") from error
    return path


def _file_in_the_way(folder: Path) -> Optional[Path]:
    """The nearest existing one of ``folder`` and its parents, when it is not a folder (else ``None``)."""
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


def _probe(folder: Path) -> None:
    """Create ``folder`` (and parents) and a temporary file in it, then remove the file; raise ``OSError``."""
    folder.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=".medseg-write-check-", dir=folder)
    os.close(handle)
    os.unlink(name)


def _reason(error: OSError) -> str:
    """``Permission denied`` / ``No space left on device`` ... (the OS's words, without the path)."""
    return error.strerror or type(error).__name__
