"""Reading the planner's calibration cache (JSON) with a reason for every way it can be broken.

The cache maps a calibration key to ``{"multiplier": float, "offset_bytes": int, "key": str, "points":
[[traced, measured], ...]}`` (:class:`~medseg_mem.memory.calibration.Calibration`). A damaged file is refused
with one line naming the file, what is wrong (the JSON parser's reason, or the entry and key) and the fix.
"""

from __future__ import annotations

import json
import numbers
from pathlib import Path
from typing import Optional

from medseg_mem.errors import OptionError


class CalibrationFileError(OptionError):
    """A calibration cache that cannot be used; the message names the file, the problem and the fix."""

    def __init__(self, message: str) -> None:
        self.option = "--calibration"
        Exception.__init__(self, message)

FIX = "delete it to measure again, or pass another --calibration file"


def read_cache(path: Path) -> dict:
    """The ``{key: calibration dict}`` mapping stored at ``path``, every entry checked.

    Raises:
        CalibrationFileError: an :class:`OptionError` naming ``--calibration``, the file and the first problem.
    """
    try:
        entries = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        _refuse(path, f"cannot be read ({error.strerror or error})")
    except UnicodeDecodeError as error:
        _refuse(path, f"is not UTF-8 text ({error.reason} at byte {error.start})")
    except json.JSONDecodeError as error:
        _refuse(path, f"is not valid JSON ({error.msg} at line {error.lineno} column {error.colno})")
    if not isinstance(entries, dict):
        _refuse(path, f"must hold a JSON object of calibrations by key; it holds a {type(entries).__name__}")
    for key, entry in entries.items():
        problem = entry_problem(entry)
        if problem:
            _refuse(path, f"entry {key!r}: {problem}")
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
    points = entry.get("points", [])
    if not isinstance(points, list) or not all(_is_pair(point) for point in points):
        return f"'points' must be a list of [traced, measured] integer pairs; got {points!r}"[:200]
    return None


def _is_pair(point: object) -> bool:
    return isinstance(point, list) and len(point) == 2 and all(isinstance(v, numbers.Real) for v in point)


def _refuse(path: Path, problem: str) -> None:
    raise CalibrationFileError(f"--calibration {path}: {problem}; {FIX}")
