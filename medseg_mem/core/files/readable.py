"""Input files checked before they are parsed: a file this process may not open is said to be so.

Readers further down (nibabel, ``torch.load``, ``json``) report a file they may not open as a corrupt one ("cannot
be read as NIfTI") or with a traceback; :func:`open_failure` opens the file first and, when that fails, makes
the one line naming the file, the cause in the OS's words, lower case ("permission denied"), and the fix.

Example:
    >>> open_failure(Path("dataset.json"))  # doctest: +SKIP
    'dataset.json: cannot be read (permission denied); make it readable (chmod a+r) or run as a user who may read it'
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Optional

#: What a user does about each cause.
FIXES = {
    errno.EACCES: "make it readable (chmod a+r) or run as a user who may read it",
    errno.EPERM: "make it readable (chmod a+r) or run as a user who may read it",
    errno.EISDIR: "name the file itself",
}


def open_failure(path: Path, label: str = "", shown: Optional[str] = None) -> Optional[str]:
    """One line saying that ``path`` cannot be read, why and the fix (``None`` when it can be read).

    Args:
        path: the file.
        label: what it is, put before the path (``"checkpoint"``), or nothing.
        shown: how the message names the file (default: ``path``).
    """
    error = _open_error(path)
    if error is None:
        return None
    fix = FIXES.get(error.errno, "check the file and its folder")
    return f"{label + ' ' if label else ''}{shown or path}: cannot be read ({_reason(error)}); {fix}"


def _open_error(path: Path) -> Optional[OSError]:
    """The ``OSError`` opening ``path`` and reading its first byte raises, or ``None``."""
    try:
        with open(path, "rb") as stream:
            stream.read(1)
    except OSError as error:
        return error
    return None


def _reason(error: OSError) -> str:
    return (error.strerror or type(error).__name__).lower()
