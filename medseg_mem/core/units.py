"""Byte quantities as users type them (``8GB``, ``512MiB``, ``1.5e9``) and as every command prints them
(``7.45 GiB``).

Free of torch so the CLI can parse options instantly.
"""

from __future__ import annotations

import math
import re

from medseg_mem.core.errors import OptionError

UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip
_BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
_PATTERN = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_bytes(text: str, option: str = "--budget") -> int:
    """Parse ``8GB``, ``512MiB``, ``1.5e9`` or ``2048`` into a positive number of bytes.

    Decimal units (kB, MB, GB, TB) are powers of 1000, binary ones (KiB, MiB, GiB, TiB) powers of 1024.

    Args:
        text: the value typed by the user.
        option: the option name used in error messages.

    Raises:
        OptionError: for text that is not a number with a known unit, or a value that is not > 0.

    Example:
        >>> parse_bytes("512MiB")
        536870912
        >>> parse_bytes("1.5e9")
        1500000000
    """
    match = _PATTERN.match(str(text))
    if not match or match.group(2).lower() not in UNITS:
        raise OptionError(option, "must be a size like 8GB, 512MiB or 1.5e9 (bytes)", text)
    value = float(match.group(1)) * UNITS[match.group(2).lower()]
    if not math.isfinite(value) or value < 1:
        raise OptionError(option, "must be a positive size (at least 1 byte)", text)
    return int(value)


def format_bytes(n_bytes: float) -> str:
    """Human-readable size in binary units with about three significant digits, e.g. ``1.23 GiB``.

    Every command prints sizes with this one function, in binary units (KiB, MiB, GiB: powers of 1024), as
    memory is usually discussed (a "16 GB" GPU holds 16 GiB). Typed sizes may use either kind of unit
    (:func:`parse_bytes`): ``--budget 8GB`` is printed as ``7.45 GiB``.

    Example:
        >>> format_bytes(512), format_bytes(1536), format_bytes(21.5 * 2**30), format_bytes(8 * 10**9)
        ('512 B', '1.50 KiB', '21.5 GiB', '7.45 GiB')
    """
    value, unit = float(n_bytes), 0
    while abs(value) >= 1024 and unit < len(_BINARY_UNITS) - 1:
        value, unit = value / 1024, unit + 1
    if unit == 0:
        return f"{value:.0f} B"
    decimals = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    return f"{value:.{decimals}f} {_BINARY_UNITS[unit]}"


def dice_percent(value: float) -> str:
    """A Dice fraction as the percentage every table and summary shows, two decimals: ``0.8013`` -> ``80.13``."""
    return f"{100 * float(value):.2f}"
