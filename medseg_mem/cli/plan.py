"""``medseg-mem plan``: predict each variant's peak memory for an image size and say which fit a budget.

Only click and torch-free modules are imported here; the planner (and torch) load inside the command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Tuple

import click

from medseg_mem.cli.common import library_errors
from medseg_mem.cli.run import parse_channels, parse_variants
from medseg_mem.errors import OptionError
from medseg_mem.memory.units import format_bytes, parse_bytes
from medseg_mem.names import DEFAULT_WORKDIR, GUIDANCE_NAMES

CALIBRATION_FILE = DEFAULT_WORKDIR / "planner-calibration.json"


def parse_shape(ctx, param, value: str) -> Tuple[int, int, int, int]:
    """``4,240,240,155`` -> ``(C, X, Y, Z)``, four positive integers."""
    try:
        shape = tuple(int(part) for part in value.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise click.BadParameter(f"must be four positive integers C,X,Y,Z like 4,240,240,155; got {value!r}")
    return shape


def parse_budget(ctx, param, value: Optional[str]) -> Optional[int]:
    """``8GB``, ``512MiB`` or ``1.5e9`` -> bytes (``None``: use the device default)."""
    if value is None:
        return None
    try:
        return parse_bytes(value)
    except OptionError as error:
        raise click.BadParameter(str(error).replace("--budget ", "", 1)) from error


def render_table(plans, header: str) -> str:
    """A plain-text table: variant, predicted, budget, fits."""
    lines = [header, f"{'variant':<9} {'predicted':>11} {'budget':>11}  fits"]
    for plan in plans:
        fits = "yes" if plan.fits else "NO"
        lines.append(
            f"{plan.variant:<9} {format_bytes(plan.predicted_bytes):>11} {format_bytes(plan.budget_bytes):>11}  {fits}"
        )
    return "\n".join(lines)


@click.command()
@click.option("--shape", required=True, callback=parse_shape, help="Image shape C,X,Y,Z, e.g. 4,240,240,155.")
@click.option("--classes", required=True, type=click.IntRange(min=2), help="Output classes, background included.")
@click.option("--variant", "variants", multiple=True, callback=parse_variants,
              help="full, patch, cascade or all (repeat or comma-separate). Default: all.")
@click.option("--budget", callback=parse_budget,
              help="Memory limit: 8GB, 512MiB or 1.5e9 (bytes). Default: CUDA total memory / available RAM.")
@click.option("--slab", type=click.IntRange(min=1), default=16, show_default=True, help="Slab thickness (voxels).")
@click.option("--downsample", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.3,
              show_default=True, help="Cascade stage-1 scale factor.")
@click.option("--guidance", type=click.Choice(GUIDANCE_NAMES), default="onehot", show_default=True,
              help="How stage 1's segmentation enters the cascade's stage 2.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Images per inference, or samples per training step.")
@click.option("--mode", type=click.Choice(("inference", "training")), default="inference", show_default=True)
@click.option("--channels", callback=parse_channels, default="32,64,128,256,512", show_default=True,
              help="U-Net widths, one per level.")
@click.option("--device", type=click.Choice(("cpu", "cuda")), default="cpu", show_default=True,
              help="Device whose calibration and default budget are used.")
@click.option("--calibration", "calibration_path", type=click.Path(path_type=Path), default=CALIBRATION_FILE,
              show_default=True, help="Calibration cache (JSON); measured and written when this device is missing.")
@click.option("--calibrate/--no-calibrate", default=True, show_default=True,
              help="Measure a calibration when the cache has none (about 30 s); else use the raw structural count.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per variant.")
@library_errors
def plan(shape, classes, variants, budget, slab, downsample, guidance, batch, mode, channels, device,
         calibration_path, calibrate, as_json) -> None:  # fmt: skip
    """Predict the peak memory of each variant before allocating anything large.

    Example: ``medseg-mem plan --shape 1,512,512,500 --classes 3 --budget 24GB``.
    """
    from medseg_mem.config import ModelConfig
    from medseg_mem.memory.calibration import cached_calibration
    from medseg_mem.memory.planner import default_budget, plan_variants
    from medseg_mem.variants import resolve_variants

    budget_source = "--budget"
    if budget is None:
        budget, budget_source = default_budget(device)
    model = ModelConfig(channels=channels, slab_size=slab, downsample=downsample, guidance=guidance)
    calibration = cached_calibration(calibration_path, channels, device, calibrate, lambda m: click.echo(m, err=True))
    plans = plan_variants(
        resolve_variants(list(variants)), shape, classes, model=model, batch=batch, mode=mode,
        calibration=calibration, budget_bytes=budget,
    )  # fmt: skip
    if as_json:
        click.echo(json.dumps([{**p.to_dict(), "budget_source": budget_source, "device": device} for p in plans]))
        return
    size = "x".join(str(s) for s in shape)
    header = f"{mode} peak memory, image {size}, {classes} classes, budget {format_bytes(budget)} ({budget_source})"
    click.echo(render_table(plans, header))
    click.echo(f"calibration: {calibration.key}")
