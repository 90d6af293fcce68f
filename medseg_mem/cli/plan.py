"""``medseg-mem plan``: predict each variant's peak memory - the whole process's, as ``top`` shows it - and say
which fit a budget.

It plans what will run (:mod:`~medseg_mem.cli.plan_target`): ``--data`` what ``run --data`` trains (the dataset's
profile with the options given on top), ``--run`` a trained run's inference, ``--shape``/``--classes`` real
data's profile. Inference plans are for ``medseg-mem predict`` (which keeps ``patch``'s input on disk) and model
its levers: ``--precision``, ``--overlap``, ``--sw-batch-size``, ``--tta``, ``--no-channels-last`` and
``--batch-size``. ``--mode training`` plans one training step and its validation with ``run``'s levers:
``--precision``, ``--checkpointing``, ``--no-channels-last``, ``--batch-size``, the loader's ``--workers``/
``--cache`` (only stages that cache use it), and ``--nproc`` (each row is one rank's memory). The option names are
``run``'s (``--slab`` and ``--batch`` still work). The default budget is the memory free now on the device less a
margin (:data:`~medseg_mem.memory.budget.MARGIN`). A variant whose lower bound is over the budget is answered
without calibrating (its figure printed as ``>=``); otherwise the machine's calibration is read from the user's
cache, or measured once. Only click and torch-free modules are imported here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Tuple

import click

from medseg_mem.cli.common import library_errors, parse_budget, slab_inference_options, tta_config, tta_options
from medseg_mem.cli.plan_target import plan_target, typed
from medseg_mem.cli.training_options import parse_cache, parse_channels, parse_variants
from medseg_mem.core.units import format_bytes
from medseg_mem.core.names import DEVICE_NAMES, GUIDANCE_NAMES, PRECISION_NAMES

TRAINING_OPTIONS = ("--checkpointing", "--workers", "--cache", "--nproc")
INFERENCE_OPTIONS = ("--overlap", "--sw-batch-size", "--tta")
HOST_NOTES = {
    "cpu": "host: the loader's RAM (cache + samples in flight), included in the process (same memory on a CPU)",
    "cuda": "host: the loader's RAM (cache + samples in flight), beside the GPU figures",
}


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


def aliased(new, old, names: str):
    """The value of an option given under its ``run`` name or its older ``plan`` name (not both)."""
    if new is not None and old is not None:
        raise click.UsageError(f"{names}: the same option twice; give one of them")
    return new if new is not None else old


def render_table(plans, header: str, device: str = "cpu") -> str:
    """A plain-text table: variant, the whole process's planned peak, what the work adds to it, budget, fits;
    training plans add the loader's host memory (and, for several processes on a CPU, how ``fits`` counts)."""
    training = any(plan.mode == "training" for plan in plans)
    host = f" {'host':>11}" if training else ""
    lines = [header, f"{'variant':<9} {'process':>12} {'added':>11}{host} {'budget':>11}  fits  peak in"]
    for plan in plans:
        bound = ">=" if plan.calibration.startswith("lower bound") else ""
        process, added = bound + format_bytes(plan.process_bytes), bound + format_bytes(plan.predicted_bytes)
        host = f" {format_bytes(plan.host_bytes):>11}" if training else ""
        fits = "yes" if plan.fits else "NO "
        lines.append(f"{plan.variant:<9} {process:>12} {added:>11}{host} {format_bytes(plan.budget_bytes):>11}  "
                     f"{fits}   {plan.stage}")  # fmt: skip
    if training:
        lines.append(HOST_NOTES["cuda" if device.startswith("cuda") else "cpu"])
    if plans[0].nproc > 1 and not device.startswith("cuda"):
        lines.append(f"fits: {plans[0].nproc} x process against the budget (the processes share this machine's RAM)")
    return "\n".join(lines)


def footer(plans) -> str:
    """What the figures rest on: the calibration (and the process baseline it measured), or the lower bound."""
    calibrated = [plan for plan in plans if not plan.calibration.startswith("lower bound")]
    lines = []
    if calibrated:
        baseline = calibrated[0].baseline_bytes
        process = f"; process before its first tensor {format_bytes(baseline)}" if baseline else ""
        lines.append(f"calibration: {calibrated[0].calibration}{process}")
    if len(calibrated) < len(plans):
        lines.append(">=: a lower bound (the trace and this process, uncalibrated): over the budget already")
    if any(plan.stage == "preprocessing" for plan in plans):
        lines.append("peak in preprocessing: predict loads and preprocesses the scan whole before segmenting it "
                     "(planned for a float32 or integer scan not stored in RAS order; predict plans each scan's own "
                     "header; --out-of-core always reads it by chunks)")
    return "\n".join(lines)


@click.command()
@click.option("--shape", callback=parse_shape, help="Image shape C,X,Y,Z, e.g. 4,240,240,155 (or --data / --run).")
@click.option("--classes", type=click.IntRange(min=2), help="Output classes, background included (or --data).")
@click.option("--data", type=click.Path(path_type=Path),
              help="A prepared dataset: plan what `run --data` trains on it (its profile, largest case, classes) "
                   "[without --shape and --run: $MEDSEG_MEM_HOME/prepared, else medseg-work/prepared, if present].")
@click.option("--run", "run_dir", type=click.Path(path_type=Path),
              help="A trained run (a run folder, or a run id in the work folder's runs): plan its inference "
                   "(on --shape or its dataset's largest case).")
@click.option("--variant", "variants", multiple=True, callback=parse_variants,
              help="full, patch, cascade or all (repeat or comma-separate). Default: all (--run: the run's).")
@click.option("--budget", callback=parse_budget,
              help="Memory limit: 8GB, 512MiB or 1.5e9 (bytes). Default: free CUDA memory / available RAM, less 10 %.")
@click.option("--slab-size", type=click.IntRange(min=1), help="Slab thickness (voxels) [16].")
@click.option("--slab", "slab_alias", type=click.IntRange(min=1), hidden=True)
@click.option("--downsample", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Cascade stage-1 scale factor [0.3].")
@click.option("--guidance", type=click.Choice(GUIDANCE_NAMES), help="Cascade guidance encoding [onehot].")
@click.option("--batch-size", type=click.IntRange(min=1),
              help="Training: samples per step [profile: 2]; inference: images per call [1].")
@click.option("--batch", "batch_alias", type=click.IntRange(min=1), hidden=True)
@click.option("--mode", type=click.Choice(("inference", "training")), default="inference", show_default=True)
@click.option("--precision", type=click.Choice(PRECISION_NAMES),
              help="Autocast dtype of the network passes (training: weights, gradients and Adam stay float32) [fp32].")
@slab_inference_options
@tta_options
@click.option("--checkpointing/--no-checkpointing", default=None,
              help="Training: recompute each U-Net level in the backward pass instead of storing its activations.")
@click.option("--channels-last/--no-channels-last", default=None,
              help="Channels-last network layout (the default of `medseg-mem run` and `predict`) [on].")
@click.option("--workers", type=click.IntRange(min=0), help="Training: DataLoader worker processes [0].")
@click.option("--cache", callback=parse_cache,
              help="Training: host memory for cached cases, e.g. 4GB or 0 (only the cascade caches) [1 GiB].")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Training: processes training together (`run --nproc`, torchrun); each row is one process's "
                   "memory, --batch-size per process.")
@click.option("--channels", callback=parse_channels,
              help="U-Net widths, one per level [profile: 32,64,128,256,512; embedded default 8,16,32,64,128].")
@click.option("--device", type=click.Choice(DEVICE_NAMES), default="auto", show_default=True,
              help="Device whose calibration and default budget are used: auto (cuda if available), cpu or cuda.")
@click.option("--calibration", "calibration_path", type=click.Path(path_type=Path),
              help="Calibration cache (JSON) to use instead of the user's (~/.cache/medseg-mem, $MEDSEG_MEM_CACHE).")
@click.option("--calibrate/--no-calibrate", default=True, show_default=True,
              help="Measure this machine's calibration when the cache has none (once, 10-30 s on 2 CPU cores); "
                   "else use the raw structural count.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per variant.")
@library_errors
def plan(shape, classes, data, run_dir, variants, budget, slab_size, slab_alias, downsample, guidance, batch_size,
         batch_alias, mode, precision, overlap, sw_batch_size, tta, tta_axes, checkpointing, channels_last, workers,
         cache, nproc, channels, device, calibration_path, calibrate, as_json) -> None:  # fmt: skip
    """Predict the peak memory of each variant before allocating anything large.

    Example: ``medseg-mem plan --shape 1,512,512,500 --classes 3 --budget 24GB``, or
    ``medseg-mem plan --data medseg-work/prepared --mode training --precision bf16 --checkpointing``.
    """
    from medseg_mem.core.device import resolve_device
    from medseg_mem.memory.check import MemoryCheck, resolve_budget
    from medseg_mem.training.calibration_step import training_setup

    ctx = click.get_current_context()
    values = dict(channels=channels, slab_size=aliased(slab_size, slab_alias, "--slab-size and --slab"),
                  downsample=downsample, guidance=guidance, batch_size=aliased(batch_size, batch_alias,
                  "--batch-size and --batch"), precision=precision, checkpointing=checkpointing,
                  channels_last=channels_last, workers=workers, cache=cache)  # fmt: skip
    changes = typed(ctx, values, slab_size=slab_alias, batch_size=batch_alias)
    _notices(mode, checkpointing, workers, cache, nproc, overlap, sw_batch_size, tta)
    if run_dir is not None and mode == "training":
        raise click.UsageError("--run plans a trained run's inference; drop --mode training (or plan --data)")
    target = plan_target(shape, classes, data, run_dir, changes)
    device = resolve_device(device).type
    check = MemoryCheck(device, resolve_budget(budget, device), lambda line: click.echo(line, err=True),
                        calibration_path, calibrate, training_setup)  # fmt: skip
    inference = _inference(target, precision, overlap, sw_batch_size, tta, tta_axes)
    batch = values["batch_size"] or 1
    plans = make_plans(check, _names(variants, target), target, mode, inference, nproc, batch)
    streamed = out_of_core_plans(check, plans, target, inference) if mode == "inference" and batch == 1 else []
    if as_json:
        by_variant = {s.variant: s for s in streamed}
        click.echo(json.dumps([{**p.to_dict(), "budget_source": check.budget.source, "device": device,
                                **out_of_core_fields(by_variant.get(p.variant))} for p in plans]))  # fmt: skip
        return
    header = header_line(plans, target.shape, target.classes, check.budget.describe(), target.train.batch_size, batch)
    click.echo(render_table(plans, header, device))
    if streamed:
        click.echo(out_of_core_line(streamed, plans))
    click.echo(footer(plans))


def out_of_core_plans(check, plans, target, inference):
    """``predict --out-of-core``'s plans of the variants that can stream (``patch``, ``cascade``; ``--overlap`` 0),
    with the in-memory rows' calibration."""
    from medseg_mem.variants import get_variant

    if inference.overlap > 0:
        return []
    calibration = next((p for p in plans if not p.calibration.startswith("lower bound")), None)
    calibration = check.calibration("inference", inference.precision, False, inference.channels_last) \
        if calibration is not None else check.lower_bound_calibration()  # fmt: skip
    return [check.inference(p.variant, target.shape, target.classes, target.model, inference, True, calibration,
                            out_of_core=True) for p in plans if get_variant(p.variant).streams()]  # fmt: skip


def out_of_core_fields(streamed) -> dict:
    """``--json``'s out-of-core figures of one row (``None`` where the variant cannot stream)."""
    if streamed is None:
        return {"out_of_core_process_bytes": None, "out_of_core_fits": None}
    return {"out_of_core_process_bytes": streamed.process_bytes, "out_of_core_fits": streamed.fits}


def out_of_core_line(streamed, plans) -> str:
    """``out of core (predict --out-of-core): patch 812 MiB (fits), ...; full needs the whole volume``."""
    rows = ", ".join(f"{p.variant} {format_bytes(p.process_bytes)} ({'fits' if p.fits else 'over the budget'})"
                     for p in streamed)  # fmt: skip
    whole = [p.variant for p in plans if p.variant not in {s.variant for s in streamed}]
    rest = f"; {', '.join(whole)} needs the whole volume (in memory only)" if whole else ""
    return f"out of core (predict --out-of-core, the whole process; it does not grow with the last axis): {rows}{rest}"


def make_plans(check, names, target, mode: str, inference, nproc: int, batch: int):
    """Each variant's plan (lower bound first); once a calibration was needed, bound-only rows are planned with
    it too, so the table's figures are alike."""

    def one(name, calibration=None):
        if mode == "training":
            return check.training(name, target.shape, target.classes, target.model, target.train, nproc,
                                  target.cases, calibration)  # fmt: skip
        return check.inference(name, target.shape, target.classes, target.model, inference, True, calibration, batch,
                               preprocessing=whole)  # fmt: skip

    whole = assumed_preprocessing(target) if mode == "inference" else 0
    plans = [one(name) for name in names]
    done = [plan for plan in plans if not plan.calibration.startswith("lower bound")]
    if not done:
        return plans
    setting = (mode, done[0].precision, done[0].checkpointing, done[0].channels_last)
    calibration = check.calibration(*setting)
    return [one(plan.variant, calibration) if plan not in done else plan for plan in plans]


def assumed_preprocessing(target) -> int:
    """What ``predict`` holds loading and preprocessing a scan of the target's shape whole, the scan known by its
    shape only (:func:`~medseg_mem.memory.preprocessing.assumed_layout`: stored as float32 or integers, not in RAS
    order), on the grid it has (the trained run's reader and cropping, else nibabel and none)."""
    from medseg_mem.memory.preprocessing import assumed_layout, preprocessing_bytes

    settings = {**(target.preprocessing or {}), "spacing": None}
    return preprocessing_bytes(assumed_layout(target.shape), settings)


def _names(variants, target):
    """The variants to plan: the trained run's, or those asked for."""
    from medseg_mem.variants import resolve_variants

    names = resolve_variants(list(variants))
    if target.variant is None:
        return names
    if tuple(variants) != ("all",) and names != [target.variant]:
        raise click.UsageError(f"--run: the trained run is a {target.variant} run; drop --variant")
    return [target.variant]


def _inference(target, precision, overlap, sw_batch_size, tta, tta_axes):
    """The prediction's settings: the options given, the run's (or profile's) layout."""
    from medseg_mem.core.config import InferenceConfig

    return InferenceConfig(sw_batch_size, overlap, precision or "fp32", target.train.channels_last,
                           **tta_config(tta, tta_axes))  # fmt: skip


def _notices(mode, checkpointing, workers, cache, nproc, overlap, sw_batch_size, tta) -> None:
    """Say once which options were set although they only apply to the other mode."""
    if mode == "training":
        given, options, other = (overlap != 0, sw_batch_size != 1, tta), INFERENCE_OPTIONS, "inference"
    else:
        given = (bool(checkpointing), bool(workers), cache is not None, nproc != 1)
        options, other = TRAINING_OPTIONS, "training"
    ignored = [name for name, set_ in zip(options, given) if set_]
    if ignored:
        click.echo(f"note: {', '.join(ignored)}: only for --mode {other}; ignored for {mode}", err=True)


def inference_levers(plans) -> str:
    """The levers of inference plans, e.g. ``bf16, overlap 0.5`` (``full`` has no slabs: the largest counts)."""
    from medseg_mem.core.config import InferenceConfig

    overlap, batch = max(p.overlap for p in plans), max(p.sw_batch_size for p in plans)
    mirroring = {"tta": True, "tta_axes": plans[0].tta} if plans[0].tta else {}
    return InferenceConfig(batch, overlap, plans[0].precision, plans[0].channels_last, **mirroring).describe()


def header_line(plans, shape, classes, budget: str, train_batch: int, batch: int) -> str:
    """First line of the table: mode (with the levers; per rank for several processes), image, classes, budget."""
    first, size = plans[0], "x".join(str(s) for s in shape)
    if first.mode == "inference":
        mode = f"inference ({inference_levers(plans)}{f', batch {batch}' if batch > 1 else ''})"
    else:
        recompute = "checkpointing" if first.checkpointing else "no checkpointing"
        layout = "channels-last" if first.channels_last else "contiguous"
        mode = f"training ({first.precision}, {recompute}, {layout}, batch {train_batch})"
    ranks = f" per rank, {first.nproc} processes, global batch {first.nproc}x{train_batch}" if first.nproc > 1 else ""
    return f"{mode} peak memory of the process{ranks}, image {size}, {classes} classes, budget {budget}"
