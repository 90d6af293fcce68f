"""A full disk for tests: the atomic writer's files take half their text, then fail with ``ENOSPC``.

Imported by test modules as ``disk_faults`` (pytest puts ``tests/`` on ``sys.path`` for its conftest).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Callable, Optional


class HalfWriter:
    """A text stream that takes half of what it is given, then fails as a full disk does."""

    def __init__(self, stream):
        self.stream = stream

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stream.close()

    def write(self, text):
        self.stream.write(text[: len(text) // 2])
        self.stream.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def install_full_disk(monkeypatch, matches: Optional[Callable[[Path], bool]] = None) -> None:
    """Files that :mod:`medseg_mem.atomic` opens for writing (those whose path ``matches``, default all)
    get half their text, then the disk is full."""
    import medseg_mem.atomic as atomic

    real_open = open

    def fake_open(path, mode="r", *args, **kwargs):
        stream = real_open(path, mode, *args, **kwargs)
        hit = "w" in mode and (matches is None or matches(Path(path)))
        return HalfWriter(stream) if hit else stream

    monkeypatch.setattr(atomic, "open", fake_open, raising=False)
