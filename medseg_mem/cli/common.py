"""Shared pieces of the CLI: library errors become one-line click errors; option callbacks and builders that
several commands share."""

from __future__ import annotations

import functools
import math
from typing import Callable, Optional, Tuple

import click

from medseg_mem.core.errors import MedsegError, OptionError


def library_errors(func: Callable) -> Callable:
    """Decorate a command so a :class:`MedsegError` becomes a click error (exit code 1, no traceback)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except MedsegError as error:
            raise click.ClickException(str(error)) from error

    return wrapper


class FiniteFloatRange(click.FloatRange):
    """click's ``FloatRange`` that also refuses ``nan`` and ``inf`` (which ``FloatRange`` lets through: ``nan``
    compares false with both bounds, ``inf`` passes a range without an upper bound)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"must be a finite number; got {value!r}", param, ctx)
        return number


def parse_overlap(ctx, param, value: Optional[float]) -> Optional[float]:
    """``--overlap`` must be a fraction of a slab in [0, 0.5] (the rule of
    :func:`medseg_mem.core.inference_config.check_overlap`)."""
    from medseg_mem.core.inference_config import check_overlap

    return library_parse(check_overlap, "--overlap", value)


def parse_budget(ctx, param, value: Optional[str]) -> Optional[int]:
    """``8GB``, ``512MiB`` or ``1.5e9`` -> bytes (``None``: use the device default)."""
    from medseg_mem.core.units import parse_bytes

    return library_parse(parse_bytes, "--budget", value)


def library_parse(parse: Callable, option: str, value):
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


def parse_tta_axes(ctx, param, value: Optional[str]) -> Optional[Tuple[int, ...]]:
    """``0,1`` -> the spatial axes ``--tta`` mirrors (the rule of :func:`medseg_mem.core.config.check_tta_axes`)."""
    from medseg_mem.core.inference_config import check_tta_axes

    def parse(text: str) -> Tuple[int, ...]:
        parts = [part.strip() for part in text.split(",")]
        return check_tta_axes(tuple(int(part) if part.lstrip("-").isdigit() else part for part in parts))

    return library_parse(parse, "--tta-axes", value)


def tta_options(func: Callable) -> Callable:
    """``--tta`` and ``--tta-axes``: test-time mirroring, for ``run``'s evaluation, ``predict`` and ``plan``."""
    func = click.option("--tta-axes", callback=parse_tta_axes, metavar="AXES",
                        help="With --tta: the spatial axes to mirror, e.g. 0,1 (4 passes) [0,1,2].")(func)  # fmt: skip
    return click.option("--tta", is_flag=True,
                        help="Test-time mirroring (nnU-Net): average the softmax over the network applied to every "
                             "flip of the mirrored axes (8 passes for 0,1,2; slab stages mirror each slab).")(func)


def tta_config(tta: bool, tta_axes: Optional[Tuple[int, ...]]) -> dict:
    """``InferenceConfig`` keywords of ``--tta``/``--tta-axes``.

    Raises:
        click.UsageError: ``--tta-axes`` without ``--tta`` (it would change nothing).
    """
    if tta_axes is not None and not tta:
        raise click.UsageError(f"--tta-axes {','.join(map(str, tta_axes))} only applies with --tta; add --tta")
    return {"tta": bool(tta), **({"tta_axes": tta_axes} if tta_axes is not None else {})}
