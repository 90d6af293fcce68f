"""Faults of the disk for tests: a full disk (the atomic writer's files take half their text, then fail with
``ENOSPC``), and a file the user may not read (:func:`deny_reads`).

Imported by test modules as ``disk_faults`` (pytest puts ``tests/`` on ``sys.path`` for its conftest).
"""

from __future__ import annotations

import builtins
import errno
import io
import os
from pathlib import Path
from typing import Callable, List, Optional


class HalfWriter:
    """A text stream that takes half of what it is given, then fails as a full disk does."""

    def __init__(self, stream):
        self.stream = stream

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stream.close()

    def __getattr__(self, name):  # seek, read, ... as the real stream
        return getattr(self.stream, name)

    def write(self, text):
        self.stream.write(text[: len(text) // 2])
        self.stream.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def install_full_disk(monkeypatch, matches: Optional[Callable[[Path], bool]] = None, module=None) -> None:
    """Files that ``module`` (default :mod:`medseg_mem.core.files.atomic`) opens for writing (those whose path
    ``matches``, default all; a file descriptor matches always) get half their text, then the disk is full."""
    import medseg_mem.core.files.atomic as atomic

    real_open = open

    def fake_open(path, mode="r", *args, **kwargs):
        stream = real_open(path, mode, *args, **kwargs)
        named = isinstance(path, (str, bytes, os.PathLike))
        hit = ("w" in mode or "+" in mode) and (matches is None or not named or matches(Path(path)))
        return HalfWriter(stream) if hit else stream

    monkeypatch.setattr(module or atomic, "open", fake_open, raising=False)


def deny_reads(monkeypatch, path: Path, cleanups: List[Callable[[], None]]) -> Path:
    """Make the file ``path`` unreadable, as mode 000 does for a user who does not own it.

    Not root: ``chmod 000`` (``cleanups`` gets the undo). Root reads anything, so opening ``path`` through
    ``open`` / ``io.open`` / ``os.open`` raises ``PermissionError`` instead, what the code under test would see.
    """
    path = Path(path)
    if os.geteuid() != 0:
        mode = path.stat().st_mode & 0o777
        path.chmod(0)
        cleanups.append(lambda: path.chmod(mode))
        return path
    target = path.resolve()
    real_open, real_os_open = builtins.open, os.open

    def denied(file) -> bool:
        return isinstance(file, (str, bytes, os.PathLike)) and Path(os.fsdecode(file)).resolve() == target

    def refuse(file):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(file))

    def fake_open(file, *args, **kwargs):
        return refuse(file) if denied(file) else real_open(file, *args, **kwargs)

    def fake_os_open(file, *args, **kwargs):
        return refuse(file) if denied(file) else real_os_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    return path
