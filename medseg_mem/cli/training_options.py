"""Option callbacks of ``run`` that ``plan`` and ``predict`` share: variant names, U-Net widths, cache size,
wall-clock minutes and marks, run ids. Each turns a bad value into a one-line ``click.BadParameter``."""

from __future__ import annotations

from typing import Optional, Tuple

import click

from medseg_mem.cli.common import library_parse
from medseg_mem.core.errors import did_you_mean
from medseg_mem.core.names import VARIANT_NAMES

AUTO_COMMANDS = ("run", "predict")  # commands whose --variant auto picks a variant by --budget


def parse_variants(ctx, param, values: Tuple[str, ...]) -> Tuple[str, ...]:
    """Split ``full,patch`` and repeated options; unknown names get "did you mean"; ``auto`` (for the commands
    of :data:`AUTO_COMMANDS`) stands alone."""
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    extra = ("all", "auto") if ctx.command.name in AUTO_COMMANDS else ("all",)
    for name in names:
        if name not in VARIANT_NAMES + extra:
            raise click.BadParameter(f"unknown variant {name!r}; {did_you_mean(name, VARIANT_NAMES + extra)}")
    if "auto" in names and len(names) > 1:
        raise click.BadParameter(f"auto picks one variant itself; give it alone, not with {', '.join(names)}")
    return tuple(names) or ("all",)


def parse_channels(ctx, param, value: Optional[str]) -> Optional[Tuple[int, ...]]:
    """``32,64,128,256,512`` -> a tuple of at least two positive widths
    (:func:`~medseg_mem.core.config.parse_widths`)."""
    from medseg_mem.core.config import parse_widths

    return library_parse(parse_widths, "--channels", value)


def parse_cache(ctx, param, value: Optional[str]) -> Optional[int]:
    """``4GB``, ``512MiB`` or ``0`` -> bytes of host memory for cached training inputs."""
    if value is None:
        return None
    from medseg_mem.core.errors import OptionError
    from medseg_mem.core.units import parse_bytes

    if str(value).strip() == "0":
        return 0
    try:
        return parse_bytes(value, option="--cache")
    except OptionError as error:
        raise click.BadParameter(f"must be a size like 4GB, 512MiB or 0 (no cache); got {value!r}") from error


def parse_time_limit(ctx, param, value: Optional[float]) -> Optional[float]:
    """``--time-limit`` in minutes: positive and finite, at least a second."""
    from medseg_mem.core.config import check_minutes

    return library_parse(lambda minutes: check_minutes("--time-limit", minutes), "--time-limit", value)


def parse_snapshots(ctx, param, value: Optional[str]) -> Optional[Tuple[float, ...]]:
    """``5,10`` -> training-time marks in minutes, sorted; each positive and at least a second from the others."""
    from medseg_mem.core.config import check_wall_clock

    if value is None:
        return None
    try:
        marks = tuple(float(part) for part in value.split(","))
    except ValueError:
        raise click.BadParameter(f"must list training-time marks in minutes like 5,10; got {value!r}") from None
    return library_parse(lambda given: check_wall_clock(None, given), "--snapshots", marks)


def parse_run_id(ctx, param, value: Optional[str]) -> Optional[str]:
    """A run id is a folder name under --runs, never a path."""
    if value is not None and (not value.strip() or value in (".", "..") or "/" in value or "\\" in value):
        raise click.BadParameter(f"must be a run id (a folder name under --runs, e.g. 20240501T123000Z-patch-3f9a1c); "
                                 f"got {value!r}")
    return value
