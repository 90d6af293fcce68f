"""One writer per output folder: ``prepare``, ``predict`` and ``export --format onnx`` hold a lock on theirs.

Two commands writing one ``--out`` at once would each finish "successfully" with the folder holding a mix, or
only the last one's files. :func:`output_lock` takes an exclusive ``flock`` on a hidden lock file without
waiting; a second command finds it held and stops with one line before it writes anything. The lock file is
``.<name>.lock`` beside a folder that does not exist yet (``prepare`` publishes its folder by a rename), else
``.medseg-mem.lock`` inside it. The kernel drops the lock when its process ends, however it ends; the file is
removed on a normal exit.

Example:
    >>> with output_lock(Path("medseg-work/prepared"), "--out", "prepare"):  # doctest: +SKIP
    ...     ...  # write the folder
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from medseg_mem.core.errors import MedsegError

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows: no lock, as before
    fcntl = None


INSIDE = ".medseg-mem.lock"


def lock_path(out_dir: Path, inside: bool = False) -> Path:
    """The lock file of the output folder ``out_dir``: ``<out_dir>/.medseg-mem.lock`` when ``inside``, else
    ``<parent>/.<name>.lock``."""
    out_dir = Path(out_dir)
    return out_dir / INSIDE if inside else out_dir.parent / f".{out_dir.name}.lock"


@contextlib.contextmanager
def output_lock(out_dir: Path, option: str, command: str, inside: bool = False) -> Iterator[None]:
    """Hold the lock of ``out_dir`` for the block.

    Args:
        out_dir: the output folder (it need not exist unless ``inside``).
        option: the option that named it (``--out``), for the message.
        command: what writes it (``prepare``), for the message.
        inside: keep the lock file inside ``out_dir`` (an existing folder) instead of beside it.

    Raises:
        MedsegError: another process holds the lock, or the lock file cannot be made: one line naming the
            option, the folder and the fix.
    """
    if fcntl is None:
        yield
        return
    path = lock_path(out_dir, inside)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise MedsegError(f"{option} {out_dir}: cannot create its lock file {path} ({error.strerror or error}); fix "
                          f"the folder's permissions or choose another {option}") from error  # fmt: skip
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise MedsegError(f"{option} {out_dir}: another {command} is writing into it right now (it holds "
                              f"{path}); wait for it to finish or choose another {option}") from None  # fmt: skip
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                path.unlink()
    finally:
        os.close(descriptor)
