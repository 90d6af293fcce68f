"""Where the planner's calibrations are cached (once per machine), and reading that JSON cache with a reason for
every way it can be broken.

The cache is one file in the user's cache folder, shared by every working folder: ``$MEDSEG_MEM_CACHE`` when set
(tests and CI point it at a temporary folder), else ``$XDG_CACHE_HOME/medseg-mem``, else ``~/.cache/medseg-mem``;
the file is :data:`FILE_NAME` in it. ``medseg-mem plan --calibration FILE`` reads and writes another file.

The cache maps a calibration key to ``{"multiplier": float, "offset_bytes": int, "key": str, "points": [[traced,
measured], ...], "baseline_bytes": int}`` (:class:`~medseg_mem.memory.calibration.Calibration`). A damaged file is
refused with one line naming the file, what is wrong (the JSON parser's reason, or the entry and key) and the fix,
in the words of the command that read it: only ``plan`` has a ``--calibration`` option.
"""

from __future__ import annotations

import json
import numbers
import os
from pathlib import Path
from typing import Optional

from medseg_mem.core.errors import OptionError

ENV = "MEDSEG_MEM_CACHE"
FILE_NAME = "calibration.json"
OPTION = "--calibration"


def cache_folder() -> Path:
    """The folder of the calibration cache: ``$MEDSEG_MEM_CACHE``, ``$XDG_CACHE_HOME/medseg-mem`` or
    ``~/.cache/medseg-mem``.

    Example:
        >>> cache_folder().name in ("medseg-mem", os.path.basename(os.environ.get("MEDSEG_MEM_CACHE", "")))
        True
    """
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "medseg-mem"


def cache_file() -> Path:
    """The calibration cache every command uses unless ``plan --calibration`` names another file."""
    return cache_folder() / FILE_NAME


def where(path: Path, option: Optional[str]) -> str:
    """How a message names the cache: ``--calibration PATH``, or ``calibration cache PATH`` for a command without
    that option."""
    return f"{option} {path}" if option else f"calibration cache {path}"


def fix(option: Optional[str]) -> str:
    """What the user can do about a cache that cannot be used, with the means the command has."""
    if option:
        return f"delete it to measure again, or pass another {option} file"
    return f"delete it to measure again, or set {ENV} to another folder"


def check_writable(path: Path, option: Optional[str]) -> None:
    """Refuse, before seconds of measuring, a cache that could not be written: a folder where the file should be,
    a file where one of its folders should be, a folder without write permission.

    Raises:
        CalibrationFileError: one line naming the cache, the problem and the fix.
    """
    from medseg_mem.core.errors import MedsegError
    from medseg_mem.core.files.writable import check_output_folder

    path = Path(path)
    if path.is_dir():
        _refuse(path, "cannot be read: it is a folder, not a file", option)
    blocker = next((p for p in (path.parent, *path.parent.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        _refuse(path, f"{blocker} is a file, not a folder", option)
    try:
        check_output_folder(path.parent, option or ENV)
    except MedsegError as error:
        _refuse(path, f"its folder cannot be written ({str(error).split('(')[-1].split(')')[0]})", option)


class CalibrationFileError(OptionError):
    """A calibration cache that cannot be used; the message names the file, the problem and the fix."""

    def __init__(self, message: str, option: Optional[str] = OPTION) -> None:
        self.option = option or ENV
        Exception.__init__(self, message)


def read_cache(path: Path, option: Optional[str] = OPTION) -> dict:
    """The ``{key: calibration dict}`` mapping stored at ``path``, every entry checked.

    Args:
        path: the JSON cache.
        option: the option that named it (``--calibration``), or ``None`` for the default cache of a command
            without that option (the message then names :data:`ENV`).

    Raises:
        CalibrationFileError: an :class:`OptionError` naming the file and the first problem.
    """
    try:
        entries = json.loads(Path(path).read_text(encoding="utf-8"))
    except IsADirectoryError:
        _refuse(path, "cannot be read: it is a folder, not a file", option)
    except OSError as error:
        _refuse(path, f"cannot be read ({error.strerror or error})", option)
    except UnicodeDecodeError as error:
        _refuse(path, f"is not UTF-8 text ({error.reason} at byte {error.start})", option)
    except json.JSONDecodeError as error:
        _refuse(path, f"is not valid JSON ({error.msg} at line {error.lineno} column {error.colno})", option)
    if not isinstance(entries, dict):
        _refuse(path, f"must hold a JSON object of calibrations by key; it holds a {type(entries).__name__}", option)
    for key, entry in entries.items():
        problem = entry_problem(entry)
        if problem:
            _refuse(path, f"entry {key!r}: {problem}", option)
    return entries


def entry_problem(entry: object) -> Optional[str]:
    """What is wrong with one calibration entry, or ``None``."""
    if not isinstance(entry, dict):
        return f"must be an object; got {type(entry).__name__}"
    rules = (("multiplier", numbers.Real), ("offset_bytes", numbers.Integral), ("key", str))
    for name, kind in rules:
        if name not in entry:
            return f"misses key {name!r}"
        if isinstance(entry[name], bool) or not isinstance(entry[name], kind):
            return f"{name!r} must be a {'number' if kind is numbers.Real else kind.__name__}; got {entry[name]!r}"
    baseline = entry.get("baseline_bytes", 0)
    if isinstance(baseline, bool) or not isinstance(baseline, numbers.Integral) or baseline < 0:
        return f"'baseline_bytes' must be a whole number >= 0; got {baseline!r}"
    points = entry.get("points", [])
    if not isinstance(points, list) or not all(_is_pair(point) for point in points):
        return f"'points' must be a list of [traced, measured] integer pairs; got {points!r}"[:200]
    return None


def _is_pair(point: object) -> bool:
    return isinstance(point, list) and len(point) == 2 and all(isinstance(v, numbers.Real) for v in point)


def _refuse(path: Path, problem: str, option: Optional[str]) -> None:
    raise CalibrationFileError(f"{where(path, option)}: {problem}; {fix(option)}", option)
