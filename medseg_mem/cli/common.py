"""Shared pieces of the CLI: library errors become one-line click errors; the list of commands."""

from __future__ import annotations

import functools
from typing import Callable, List, Optional

import click

from medseg_mem.errors import MedsegError, OptionError


def library_errors(func: Callable) -> Callable:
    """Decorate a command so a :class:`MedsegError` becomes a click error (exit code 1, no traceback)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except MedsegError as error:
            raise click.ClickException(str(error)) from error

    return wrapper


def COMMANDS() -> List[click.Command]:  # noqa: N802 - reads as a constant list at the call site
    """All subcommands; each module imports only click and light modules at import time."""
    from medseg_mem.cli import compare, export, plan, predict, prepare, run

    return [prepare.prepare, run.run, compare.compare, plan.plan, predict.predict, export.export]


def parse_overlap(ctx, param, value: Optional[float]) -> Optional[float]:
    """``--overlap`` must be a fraction of a slab in [0, 0.5] (the rule of :func:`medseg_mem.config.check_overlap`)."""
    from medseg_mem.config import check_overlap

    return _library_parse(check_overlap, "--overlap", value)


def parse_budget(ctx, param, value: Optional[str]) -> Optional[int]:
    """``8GB``, ``512MiB`` or ``1.5e9`` -> bytes (``None``: use the device default)."""
    from medseg_mem.memory.units import parse_bytes

    return _library_parse(parse_bytes, "--budget", value)


def _library_parse(parse: Callable, option: str, value):
    """``parse(value)`` (``None`` passes through); its :class:`OptionError` becomes click's ``BadParameter``."""
    if value is None:
        return None
    try:
        return parse(value)
    except OptionError as error:
        raise click.BadParameter(str(error).replace(f"{option} ", "", 1)) from error


def slab_inference_options(func: Callable) -> Callable:
    """``--overlap`` and ``--sw-batch-size``: how slab stages run, for ``predict`` and ``plan``."""
    func = click.option("--sw-batch-size", type=click.IntRange(min=1), default=1, show_default=True,
                        help="Inference: slabs per network call.")(func)  # fmt: skip
    return click.option("--overlap", type=float, default=0.0, show_default=True, callback=parse_overlap,
                        help="Inference: fraction of a slab shared with the next, 0-0.5, blended with Gaussian "
                             "weights.")(func)  # fmt: skip
