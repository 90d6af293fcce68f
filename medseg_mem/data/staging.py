"""Staging folders of ``prepare``: locked while being written, removed by the next ``prepare`` when stale.

``prepare`` writes into a hidden sibling ``.<out>.partial-XXXXXXXX`` of its output folder
(:func:`medseg_mem.core.files.atomic.staging_folder`) and renames it into place at the end. A ``prepare`` killed hard
(SIGKILL, power loss) leaves that folder behind. Each ``prepare`` holds an exclusive ``flock`` on its staging
folder while it writes - the kernel drops it when the process dies, however it dies - so the next ``prepare``
of the same output removes every partial folder of that output whose lock it can take, and leaves alone the
ones another ``prepare`` is still writing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import List, Optional

from medseg_mem.core.files.atomic import TEMP_PART, remove_path

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows: stale folders are reported, not removed
    fcntl = None


def hold(staging: Path) -> Optional[int]:
    """Lock ``staging`` for as long as the returned descriptor is open (``None`` where locks are unavailable)."""
    if fcntl is None:
        return None
    descriptor = os.open(staging, os.O_RDONLY)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    return descriptor


def release(descriptor: Optional[int]) -> None:
    """Close the descriptor from :func:`hold` (the lock goes with it)."""
    if descriptor is not None:
        os.close(descriptor)


def partial_folders(out_dir: Path) -> List[Path]:
    """The staging folders of ``out_dir`` in its parent: ``.<name>.partial-XXXXXXXX``, real folders only."""
    out_dir = Path(out_dir)
    pattern = re.compile(re.escape(f".{out_dir.name}.partial-") + TEMP_PART)
    if not out_dir.parent.is_dir():
        return []
    found = [p for p in out_dir.parent.iterdir() if pattern.fullmatch(p.name)]
    return sorted(p for p in found if p.is_dir() and not p.is_symlink())


def remove_stale(out_dir: Path) -> List[Path]:
    """Remove the partial folders of ``out_dir`` that no running ``prepare`` holds; return those removed."""
    if fcntl is None:
        return []
    removed = []
    for folder in partial_folders(out_dir):
        if _unheld(folder):
            remove_path(folder)
            if not folder.exists():
                removed.append(folder)
    return removed


def _unheld(folder: Path) -> bool:
    """True when nobody holds ``folder``'s lock (its writer died); the lock is released again at once."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(descriptor)
