"""SHA-256 sidecars: ``best.pt.sha256`` records the digest of ``best.pt`` so a damaged or modified file is
refused on load instead of silently giving other predictions.

The sidecar is in ``sha256sum`` format (``<hex>  <name>``, so ``sha256sum -c best.pt.sha256`` checks it too).
Replacing a file keeps the pair consistent across a crash at any moment: :func:`stage_digest` first records the
digests of both the old and the new file, the new file then replaces the old one, and :func:`settle_digest`
drops the old digest. Whichever file a crash leaves in place, its digest is listed.

:func:`replacing_with_digest` does all of it around an atomic write.

Example:
    >>> with replacing_with_digest(path, suffix=".pt") as temp:  # doctest: +SKIP
    ...     torch.save(state, temp)
    >>> verify_digest(path)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from pathlib import Path
from typing import Iterator, List, Optional

from medseg_mem.core.files.atomic import replacing, write_text_atomic
from medseg_mem.core.errors import MedsegError
from medseg_mem.core.files.readable import open_failure

SUFFIX = ".sha256"
_HEX = re.compile(r"^[0-9a-f]{64}$")


def sidecar(path: Path) -> Path:
    """``best.pt`` -> ``best.pt.sha256``."""
    path = Path(path)
    return path.with_name(path.name + SUFFIX)


def sha256_file(path: Path) -> str:
    """The SHA-256 of the file's bytes, as 64 lowercase hex digits (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def replacing_with_digest(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """:func:`medseg_mem.core.files.atomic.replacing` that also keeps ``path``'s sidecar consistent: the block writes
    the yielded temporary file, which then replaces ``path`` with its SHA-256 listed beside it.

    Raises:
        WriteError: the file or its sidecar cannot be written; the previous pair is unchanged.
    """
    path, staged = Path(path), []
    with replacing(path, suffix=suffix, before_replace=lambda temp: staged.append(stage_digest(path, temp))) as temp:
        yield temp
    settle_digest(path, staged[0])


def stage_digest(path: Path, new_file: Path) -> str:
    """Before ``new_file`` replaces ``path``: list the new digest and the old file's (if any); return the new."""
    path, new = Path(path), sha256_file(new_file)
    old = [sha256_file(path)] if path.is_file() else []
    _write(path, [new] + [digest for digest in old if digest != new])
    return new


def settle_digest(path: Path, digest: str) -> None:
    """After the replacement: the sidecar lists ``digest`` only."""
    _write(Path(path), [digest])


RETRAIN = "retrain with `medseg-mem run`"


def verify_digest(path: Path, label: str = "checkpoint", remake: str = RETRAIN) -> None:
    """Check ``path`` against its sidecar; a file without a sidecar (written before digests existed) passes.

    Args:
        path: the file to check.
        label: what it is, for the message (``checkpoint``, ``ONNX model`` ...).
        remake: how to make the file again, for the message.

    Raises:
        MedsegError: the file's SHA-256 is not listed, or the sidecar is unreadable; one line naming the file.
    """
    listed = read_digests(path, label)
    if listed is not None and sha256_file(path) not in listed:
        raise MedsegError(
            f"{label} {path}: SHA-256 mismatch, the file was modified or damaged after it was written; "
            f"restore it (and {sidecar(path).name}) from a backup or {remake}"
        )


def read_digests(path: Path, label: str = "checkpoint") -> Optional[List[str]]:
    """The digests listed for ``path``, or ``None`` when it has no sidecar.

    Raises:
        MedsegError: the sidecar exists but lists no valid SHA-256.
    """
    record = sidecar(path)
    if not record.is_file():
        return None
    unreadable = open_failure(record)
    if unreadable:
        raise MedsegError(f"{label} {path}: {unreadable}")
    try:
        lines = record.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError):
        lines = []
    digests = [line.split()[0].lower() for line in lines if line.split() and _HEX.match(line.split()[0].lower())]
    if not digests:
        raise MedsegError(f"{label} {path}: its digest file {record.name} is damaged (no SHA-256 in it); "
                          f"restore both files from a backup, or delete {record.name} to load without the check")
    return digests


def _write(path: Path, digests: List[str]) -> None:
    write_text_atomic(sidecar(path), "".join(f"{digest}  {path.name}\n" for digest in digests))
