"""``medseg-mem plan``: predict each variant's peak memory for an image size and say which fit a budget.

The image size comes from ``--shape``/``--classes`` or from a prepared dataset (``--data``: its channels, its
largest case and its classes). Inference plans are for ``medseg-mem predict`` (which keeps ``patch``'s input
on disk while it reads it slab by slab) and model its levers: ``--precision``, ``--overlap``,
``--sw-batch-size``, ``--tta``, ``--no-channels-last`` and ``--batch``. ``--mode training`` plans one training
step with the memory levers of ``medseg-mem run``: ``--precision``, ``--checkpointing``, ``--no-channels-last``,
``--batch``, the loader's ``--workers``/``--cache``, and ``--nproc`` (processes under ``torchrun``: each row is one
rank's memory). The default budget is the memory free now on the device
(CUDA: ``mem_get_info``; CPU: available RAM) less a margin (:data:`~medseg_mem.memory.budget.MARGIN`).
Only click and torch-free modules are imported here; the planner (and torch) load inside the command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Tuple

import click

from medseg_mem.cli.common import library_errors, parse_budget, slab_inference_options, tta_config, tta_options
from medseg_mem.cli.training_options import parse_cache, parse_channels, parse_variants
from medseg_mem.config import TrainConfig
from medseg_mem.memory.units import format_bytes
from medseg_mem.names import DEFAULT_WORKDIR, DEVICE_NAMES, GUIDANCE_NAMES, PRECISION_NAMES

CALIBRATION_FILE = DEFAULT_WORKDIR / "planner-calibration.json"
DEFAULT_CACHE = TrainConfig.cache_bytes
TRAINING_OPTIONS = ("--checkpointing", "--workers", "--cache", "--nproc")
INFERENCE_OPTIONS = ("--overlap", "--sw-batch-size", "--tta")


def parse_shape(ctx, param, value: Optional[str]) -> Optional[Tuple[int, int, int, int]]:
    """``4,240,240,155`` -> ``(C, X, Y, Z)``, four positive integers (``None`` when not given)."""
    if value is None:
        return None
    try:
        shape = tuple(int(part) for part in value.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise click.BadParameter(f"must be four positive integers C,X,Y,Z like 4,240,240,155; got {value!r}")
    return shape


def render_table(plans, header: str, device: str = "cpu") -> str:
    """A plain-text table: variant, predicted, budget, fits; training plans add the loader's host memory (and,
    for several processes on a CPU, how ``fits`` counts them)."""
    training = any(plan.mode == "training" for plan in plans)
    host = f" {'host':>11}" if training else ""
    lines = [header, f"{'variant':<9} {'predicted':>11}{host} {'budget':>11}  fits"]
    for plan in plans:
        fits = "yes" if plan.fits else "NO"
        host = f" {format_bytes(plan.host_bytes):>11}" if training else ""
        predicted, budget = format_bytes(plan.predicted_bytes), format_bytes(plan.budget_bytes)
        lines.append(f"{plan.variant:<9} {predicted:>11}{host} {budget:>11}  {fits}")
    if training:
        lines.append(HOST_NOTES["cuda" if device.startswith("cuda") else "cpu"])
    if plans[0].nproc > 1 and not device.startswith("cuda"):
        lines.append(f"fits: {plans[0].nproc} x predicted against the budget (the processes share this machine's RAM)")
    return "\n".join(lines)


HOST_NOTES = {
    "cpu": "host: the loader's RAM (cache + samples in flight), included in predicted (same memory on a CPU)",
    "cuda": "host: the loader's RAM (cache + samples in flight), beside predicted (GPU memory)",
}


def shape_from_data(root: Path) -> Tuple[Tuple[int, int, int, int], int]:
    """``((C, X, Y, Z), classes)`` of a prepared dataset: its channels, its largest case by voxels, its classes.

    Raises:
        DatasetError: when the folder is not a prepared dataset or a case has no valid ``prepared_shape``.
    """
    from medseg_mem.data.prepared import PreparedDataset

    data = PreparedDataset.open(root)
    return data.largest_image_shape(), data.num_classes


def image_size(shape, classes, data) -> Tuple[Tuple[int, int, int, int], int]:
    """The ``(shape, classes)`` to plan for: from ``--data``, or from ``--shape`` and ``--classes``.

    Raises:
        click.UsageError: for neither or both ways, or ``--shape`` without ``--classes`` (and the reverse).
    """
    given = [name for name, value in (("--shape", shape), ("--classes", classes)) if value is not None]
    if data is not None and given:
        raise click.UsageError(f"--data takes the shape and classes from the dataset; drop {' and '.join(given)}")
    if data is not None:
        return shape_from_data(data)
    if len(given) < 2:
        missing = " and ".join(name for name in ("--shape", "--classes") if name not in given)
        raise click.UsageError(f"give --shape and --classes, or --data PREPARED (missing {missing})")
    return shape, classes


def mode_levers(
    mode: str, precision: str, checkpointing: bool, workers: int, cache: Optional[int], channels_last: bool = True,
    overlap: float = 0.0, sw_batch_size: int = 1, mirroring: Optional[dict] = None, nproc: int = 1,
) -> dict:  # fmt: skip
    """The planner's options for ``mode``; options of the other mode get a one-line notice on stderr.

    ``mirroring``: the ``tta``/``tta_axes`` keywords of :class:`~medseg_mem.config.InferenceConfig`.
    """
    from medseg_mem.config import InferenceConfig

    mirroring = mirroring or {}
    if mode == "training":
        _ignored(INFERENCE_OPTIONS, (overlap != 0, sw_batch_size != 1, mirroring.get("tta", False)), "inference")
        cache_bytes = DEFAULT_CACHE if cache is None else cache
        return dict(precision=precision, checkpointing=checkpointing, workers=workers, cache_bytes=cache_bytes,
                    channels_last=channels_last, nproc=nproc)  # fmt: skip
    _ignored(TRAINING_OPTIONS, (checkpointing, workers != 0, cache is not None, nproc != 1), "training")
    return dict(inference=InferenceConfig(sw_batch_size, overlap, precision, channels_last, **mirroring))


def _ignored(options, given, mode: str) -> None:
    """Say once which of ``options`` were set although they only apply to ``--mode {mode}``."""
    ignored = [name for name, set_ in zip(options, given) if set_]
    if ignored:
        other = "inference" if mode == "training" else "training"
        click.echo(f"note: {', '.join(ignored)}: only for --mode {mode}; ignored for {other}", err=True)


@click.command()
@click.option("--shape", callback=parse_shape, help="Image shape C,X,Y,Z, e.g. 4,240,240,155 (or use --data).")
@click.option("--classes", type=click.IntRange(min=2), help="Output classes, background included (or use --data).")
@click.option("--data", type=click.Path(path_type=Path),
              help="A prepared dataset: plan for its channels, its largest case and its classes.")
@click.option("--variant", "variants", multiple=True, callback=parse_variants,
              help="full, patch, cascade or all (repeat or comma-separate). Default: all.")
@click.option("--budget", callback=parse_budget,
              help="Memory limit: 8GB, 512MiB or 1.5e9 (bytes). Default: free CUDA memory / available RAM, less 10 %.")
@click.option("--slab", type=click.IntRange(min=1), default=16, show_default=True, help="Slab thickness (voxels).")
@click.option("--downsample", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.3,
              show_default=True, help="Cascade stage-1 scale factor.")
@click.option("--guidance", type=click.Choice(GUIDANCE_NAMES), default="onehot", show_default=True,
              help="How stage 1's segmentation enters the cascade's stage 2.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Images per inference, or samples per training step.")
@click.option("--mode", type=click.Choice(("inference", "training")), default="inference", show_default=True)
@click.option("--precision", type=click.Choice(PRECISION_NAMES), default="fp32", show_default=True,
              help="Autocast dtype of the network passes (training: weights, gradients and Adam stay float32).")
@slab_inference_options
@tta_options
@click.option("--checkpointing/--no-checkpointing", default=False, show_default=True,
              help="Training: recompute each U-Net level in the backward pass instead of storing its activations.")
@click.option("--channels-last/--no-channels-last", default=TrainConfig.channels_last, show_default=True,
              help="Channels-last network layout (the default of `medseg-mem run` and `predict`).")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Training: DataLoader worker processes (host memory: samples in flight).")
@click.option("--cache", callback=parse_cache,
              help="Training: host memory for cached cases, e.g. 4GB or 0. Default: 1 GiB (as `medseg-mem run`).")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Training: processes training together (`run --nproc`, torchrun); each row is one process's "
                   "memory, --batch per process.")
@click.option("--channels", callback=parse_channels, default="32,64,128,256,512", show_default=True,
              help="U-Net widths, one per level.")
@click.option("--device", type=click.Choice(DEVICE_NAMES), default="auto", show_default=True,
              help="Device whose calibration and default budget are used: auto (cuda if available), cpu or cuda.")
@click.option("--calibration", "calibration_path", type=click.Path(path_type=Path), default=CALIBRATION_FILE,
              show_default=True, help="Calibration cache (JSON); measured and written when this device is missing.")
@click.option("--calibrate/--no-calibrate", default=True, show_default=True,
              help="Measure a calibration when the cache has none (inference: about 30 s; training: 1.5-2.5 min per "
                   "precision and checkpointing setting on 2 CPU cores); else use the raw structural count.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per variant.")
@library_errors
def plan(shape, classes, data, variants, budget, slab, downsample, guidance, batch, mode, precision, overlap,
         sw_batch_size, tta, tta_axes, checkpointing, channels_last, workers, cache, nproc, channels, device,
         calibration_path, calibrate, as_json) -> None:  # fmt: skip
    """Predict the peak memory of each variant before allocating anything large.

    Example: ``medseg-mem plan --shape 1,512,512,500 --classes 3 --budget 24GB``, or
    ``medseg-mem plan --data medseg-work/prepared --mode training --precision bf16 --checkpointing``.
    """
    from medseg_mem.config import ModelConfig
    from medseg_mem.device import resolve_device
    from medseg_mem.memory.calibration import cached_calibration
    from medseg_mem.memory.planner import default_budget, plan_variants
    from medseg_mem.variants import resolve_variants

    shape, classes = image_size(shape, classes, data)
    levers = mode_levers(mode, precision, checkpointing, workers, cache, channels_last, overlap, sw_batch_size,
                         tta_config(tta, tta_axes), nproc)  # fmt: skip
    device = resolve_device(device).type
    budget_source = "--budget"
    if budget is None:
        budget, budget_source = default_budget(device)
    model = ModelConfig(channels=channels, slab_size=slab, downsample=downsample, guidance=guidance)
    calibration = cached_calibration(calibration_path, channels, device, calibrate, lambda m: click.echo(m, err=True),
                                     mode=mode, precision=precision, checkpointing=checkpointing,
                                     channels_last=channels_last)  # fmt: skip
    on_disk = {"input_on_disk": True} if mode == "inference" else {}  # as predict runs patch
    plans = plan_variants(
        resolve_variants(list(variants)), shape, classes, model=model, batch=batch, mode=mode,
        calibration=calibration, budget_bytes=budget, device=device, **levers, **on_disk,
    )  # fmt: skip
    if as_json:
        click.echo(json.dumps([{**p.to_dict(), "budget_source": budget_source, "device": device} for p in plans]))
        return
    click.echo(render_table(plans, header_line(plans, shape, classes, budget, budget_source, batch), device))
    click.echo(f"calibration: {calibration.key}")


def inference_levers(plans) -> str:
    """The levers of inference plans, e.g. ``bf16, overlap 0.5`` (``full`` has no slabs: the largest counts)."""
    from medseg_mem.config import InferenceConfig

    overlap, batch = max(p.overlap for p in plans), max(p.sw_batch_size for p in plans)
    mirroring = {"tta": True, "tta_axes": plans[0].tta} if plans[0].tta else {}
    return InferenceConfig(batch, overlap, plans[0].precision, plans[0].channels_last, **mirroring).describe()


def header_line(plans, shape, classes, budget: int, budget_source: str, batch: int) -> str:
    """First line of the table: mode (with the training levers; per rank for several processes), image, classes
    and budget."""
    mode, size, nproc = plans[0].mode, "x".join(str(s) for s in shape), plans[0].nproc
    if mode == "inference":
        mode = f"inference ({inference_levers(plans)})"
    if plans[0].mode == "training":
        recompute = "checkpointing" if plans[0].checkpointing else "no checkpointing"
        layout = "channels-last" if plans[0].channels_last else "contiguous"
        mode = f"training ({plans[0].precision}, {recompute}, {layout}, batch {batch})"
    ranks = f" per rank, {nproc} processes, global batch {nproc}x{batch}" if nproc > 1 else ""
    budget = f"budget {format_bytes(budget)} ({budget_source})"
    return f"{mode} peak memory{ranks}, image {size}, {classes} classes, {budget}"
