"""``medseg-mem run``: parse and validate options, then call :func:`medseg_mem.runner.run.run_variants`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from dataclasses import fields
from typing import Optional, Tuple

import click

from medseg_mem.cli.common import (
    FiniteFloatRange,
    library_errors,
    parse_budget,
    parse_overlap,
    tta_config,
    tta_options,
)
from medseg_mem.core.changes import ModelChanges, RunChanges, TrainChanges
from medseg_mem.core.config import RunRequest
from medseg_mem.cli.training_options import (
    parse_cache,
    parse_channels,
    parse_run_id,
    parse_snapshots,
    parse_time_limit,
    parse_variants,
)
from medseg_mem.core.locations import HOME_TEXT, default_prepared, default_results, default_runs
from medseg_mem.core.names import (
    AUGMENT_NAMES,
    CLASS_WEIGHT_NAMES,
    DEVICE_NAMES,
    GUIDANCE_NAMES,
    LOSS_NAMES,
    LR_SCHEDULE_NAMES,
    MAX_STEPS,
    OPTIMIZER_NAMES,
    PRECISION_NAMES,
    STAGE2_GUIDANCE_NAMES,
)


ARGV_KEY = "medseg_mem.run.argv"
#: ``run``'s options that are settings, by field name (``--cache`` is ``cache_bytes``; ``--foreground-oversample``
#: has an older spelling, folded in by :func:`slab_alias`).
MODEL_CHANGES = tuple(field.name for field in fields(ModelChanges))
TRAIN_CHANGES = tuple(field.name for field in fields(TrainChanges) if field.name != "foreground_oversample")


class ArgvCommand(click.Command):
    """A command that keeps its own arguments as given (``ctx.meta``), for ``--nproc`` to hand to torchrun."""

    def parse_args(self, ctx: click.Context, args):
        ctx.meta[ARGV_KEY] = list(args)
        return super().parse_args(ctx, args)


def resume_paths(ctx: click.Context, run_dir: Path, data_dir: Path, results: Path) -> Tuple[Path, Path]:
    """The resumed run's saved dataset (another --data is a usage error) and, without --results, its saved CSV."""
    from medseg_mem.runner.resume import saved_data_dir, saved_results, same_path
    from medseg_mem.runner.settings import load_run_record

    record = load_run_record(run_dir)
    saved = saved_data_dir(record, run_dir)
    if given(ctx, "data_dir") and not same_path(data_dir, saved):
        raise click.UsageError(f"--data {data_dir}: --resume {run_dir.name} continues on the dataset the run was "
                               f"trained on ({saved}, in its run.json); drop --data")
    return saved, results if given(ctx, "results") else (saved_results(record) or results)


def given(ctx: click.Context, name: str) -> bool:
    """True when the user typed the option (not its default)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


@click.command(cls=ArgvCommand)
@click.option("--variant", "variants", multiple=True, callback=parse_variants,
              help="full, patch, cascade or all (repeat or comma-separate), or auto: the most accurate variant "
                   "whose planned training and inference fit --budget. Default: all.")
@click.option("--budget", "budget_bytes", callback=parse_budget,
              help="Memory the run must fit, e.g. 8GB: its planned peak (training and evaluation, the whole "
                   "process) is checked before any training; --variant auto picks the variant that fits [free "
                   "memory less 10 %].")
@click.option("--no-memory-check", "memory_check", flag_value=False, default=True,
              help="Train even when the planned peak exceeds --budget (the plan is still said and filed).")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=default_prepared,
              show_default=f"{HOME_TEXT}/prepared",
              help="Prepared dataset (output of `medseg-mem prepare`).")
@click.option("--results", type=click.Path(path_type=Path), default=default_results,
              show_default=f"{HOME_TEXT}/results.csv",
              help="Results CSV to append to.")
@click.option("--runs", "runs_dir", type=click.Path(path_type=Path), default=default_runs,
              show_default=f"{HOME_TEXT}/runs",
              help="Folder for run checkpoints (<runs>/<run id>/<stage>/best.pt).")
@click.option("--steps", type=click.IntRange(min=1, max=MAX_STEPS),
              help="Training steps per stage [300; embedded default 200].")
@click.option("--batch-size", type=click.IntRange(min=1), help="Samples per step [profile: 2].")
@click.option("--val-every", type=click.IntRange(min=1), help="Validate every N steps [profile: 50].")
@click.option("--lr", type=FiniteFloatRange(0, min_open=True),
              help="Learning rate [Adam: 3e-4, embedded default 3e-3; SGD: 1e-2].")
@click.option("--lr-schedule", type=click.Choice(LR_SCHEDULE_NAMES),
              help="poly: nnU-Net's lr * (1 - step/steps)^0.9, or constant (thesis) [real data: poly; embedded "
                   "default: constant].")
@click.option("--optimizer", type=click.Choice(OPTIMIZER_NAMES),
              help="adam, or sgd: SGD with Nesterov momentum 0.99 and weight decay 3e-5 (nnU-Net) [adam].")
@click.option("--augment", type=click.Choice(AUGMENT_NAMES),
              help="Augment each training sample: none, or nnunet: random rotation, scaling, noise, brightness, "
                   "contrast, gamma and mirroring (slab stages rotate and scale in-plane) [none].")
@click.option("--loss", type=click.Choice(LOSS_NAMES), help="dice_ce (default) or dice (thesis).")
@click.option("--class-weights", type=click.Choice(CLASS_WEIGHT_NAMES),
              help="Loss class weights: none, or balanced (sqrt(max count / count) from the train split) "
                   "[none; embedded default balanced].")
@click.option("--batch-dice/--no-batch-dice", default=None, help="Dice over the whole batch [default: on].")
@click.option("--channels", callback=parse_channels,
              help="U-Net widths per level [spec 32,64,128,256,512; embedded default 8,16,32,64,128].")
@click.option("--deep-supervision/--no-deep-supervision", default=None,
              help="nnU-Net's deep supervision: a 1x1x1 head on each decoder level below the top, loss weighted "
                   "1, 1/2, 1/4 ... over the resolutions (training only; needs >= 3 levels) [off].")
@click.option("--slab-size", type=click.IntRange(min=1), help="Slab thickness along the last axis [16].")
@click.option("--downsample", type=FiniteFloatRange(0, 1, min_open=True, max_open=True),
              help="Cascade stage-1 scale factor [0.3].")
@click.option("--guidance", type=click.Choice(GUIDANCE_NAMES), help="Cascade guidance encoding [onehot].")
@click.option("--foreground-oversample", type=FiniteFloatRange(0, 1), metavar="P",
              help="Fraction of slab samples drawn among the slabs holding foreground (nnU-Net: 0.33); 1: all, "
                   "0: any slab. Slab stages only: whole-volume stages have no crops [0].")
@click.option("--skip-empty-slabs/--any-slab", default=None,
              help="Older spelling of --foreground-oversample 1 / 0 (the same samples).")
@click.option("--guidance-noise", type=FiniteFloatRange(0, 1),
              help="Chance per class of a random dilation/erosion/opening/closing of the cascade's stage-2 "
                   "training guidance (nnU-Net's cascade) [0].")
@click.option("--stage2-guidance", type=click.Choice(STAGE2_GUIDANCE_NAMES),
              help="What the cascade's stage 2 trains on: truth (the ground truth at stage-1 resolution, thesis) or "
                   "predicted (stage 1's out-of-fold predictions, nnU-Net's cascade; adds --guidance-folds stage-1 "
                   "trainings) [real data: predicted; embedded default: truth].")
@click.option("--guidance-folds", type=click.IntRange(min=2),
              help="Folds of the out-of-fold stage-1 models with --stage2-guidance predicted [2].")
@click.option("--precision", type=click.Choice(PRECISION_NAMES),
              help="Training (and, without --inference-precision, evaluation) precision: fp32, or autocast to "
                   "bf16 / fp16 (less memory) [fp32].")
@click.option("--inference-precision", type=click.Choice(PRECISION_NAMES),
              help="Precision of the test-set evaluation and its memory figure [the training --precision].")
@click.option("--overlap", type=float, callback=parse_overlap,
              help="Evaluation: fraction of a slab shared with the next, 0-0.5, blended with Gaussian weights [0].")
@click.option("--sw-batch-size", type=click.IntRange(min=1), help="Evaluation: slabs per network call [1].")
@tta_options
@click.option("--checkpointing/--no-checkpointing", default=None,
              help="Activation checkpointing: recompute each U-Net level in the backward pass (less training "
                   "memory, ~1/3 more compute) [off].")
@click.option("--channels-last/--no-channels-last", default=None,
              help="Train with channels-last weights and activations (less memory, faster on CPU) [on].")
@click.option("--workers", type=click.IntRange(min=0), help="DataLoader worker processes; 0 loads in the training "
              "process [0].")
@click.option("--cache", "cache_bytes", callback=parse_cache, metavar="SIZE",
              help="Host memory for cached training inputs, e.g. 4GB; cases beyond it are read per sample [1GiB].")
@click.option("--time-limit", type=float, callback=parse_time_limit, metavar="MINUTES",
              help="Training wall clock per variant, validation included: training stops at the first step that "
                   "ends past it, or at --steps, whichever first. A cascade shares it: each stage gets an equal "
                   "share of what the stages before it left (stage 1 half, shared with its fold models under "
                   "--stage2-guidance predicted; stage 2 the rest). --lr-schedule poly "
                   "then decays over the larger of the step and the time fraction [none].")
@click.option("--snapshots", callback=parse_snapshots, metavar="MINUTES,...",
              help="Training-time marks, e.g. 5,10 (each below --time-limit): when training passes one, the best "
                   "checkpoint so far is kept (snap-<seconds>s.pt) and at the end evaluated on the test split into "
                   "rows of its own (budget_seconds) [none].")
@click.option("--seed", type=click.IntRange(min=0), help="Seed for weights and sampling [0].")
@click.option("--deterministic/--no-deterministic", default=None,
              help="Also make torch refuse nondeterministic algorithms (the same seed already repeats a CPU run).")
@click.option("--device", type=click.Choice(DEVICE_NAMES), help="auto (cuda if available), cpu or cuda.")
@click.option("--resume", metavar="RUN_ID", callback=parse_run_id,
              help="Continue an interrupted run from its last checkpoints, on its saved dataset; a finished run "
                   "is only reported.")
@click.option("--init-from", metavar="RUN", help="Fine-tune: each stage starts from this trained run's best weights "
              "(a run id under --runs, or a run folder), on --data, with its own --steps/--time-limit; the run's "
              "variant and network are kept [random weights].")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train with N processes on this machine (starts torchrun --standalone --nproc_per_node N; "
                   "--batch-size is per process). Several machines: call torchrun yourself.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@library_errors
def run(variants, budget_bytes, memory_check, data_dir, results, runs_dir, resume, nproc, quiet, init_from,
        **options) -> None:
    """Train each variant, keep the best checkpoint on validation, evaluate on test, append to the CSV.

    Works in ./medseg-work/ by default (or $MEDSEG_MEM_HOME), after `medseg-mem prepare`.
    """
    inference, inference_precision = inference_options(options)
    changes = run_changes(options)
    if resume and (init_from or changes.given()):
        raise click.UsageError("--resume continues a run with its saved settings; drop the other training options")
    if changes.train.snapshots is not None:
        from medseg_mem.core.config import check_wall_clock

        check_wall_clock(changes.train.time_limit, changes.train.snapshots)  # a mark past the limit: at once
    check_network_options(changes, tuple(variants))
    request = RunRequest(variants, data_dir, results, runs_dir, resume, changes, progress=not quiet,
                         inference=inference, inference_precision=inference_precision, budget_bytes=budget_bytes,
                         memory_check=memory_check, init_from=init_from)  # fmt: skip
    if memory_check and tuple(variants) != ("auto",) and not init_from:  # fine-tuning: its run's network, planned later
        from medseg_mem.core.names import VARIANT_NAMES
        from medseg_mem.runner.guard import check_floor

        check_floor(request, VARIANT_NAMES if "all" in variants else list(variants), nproc)  # before torch loads
    if nproc > 1:
        from medseg_mem.runner.launch import relaunch

        ctx = click.get_current_context()
        ctx.exit(relaunch(nproc, ctx.meta[ARGV_KEY]))
    from medseg_mem.runner.run import RunInterrupted, run_variants

    if resume:
        data_dir, results = resume_paths(click.get_current_context(), runs_dir / resume, data_dir, results)
        request = dataclasses.replace(request, data_dir=data_dir, results=results)
    for option, notice in lever_notices(changes):
        click.echo(f"note: {option} {notice}", err=True)
    try:
        run_variants(request, echo=click.echo)
    except RunInterrupted as interrupted:  # Ctrl-C: one line with the run id and its --resume, not "Aborted!"
        raise click.ClickException(str(interrupted)) from None


def run_changes(options: dict) -> RunChanges:
    """The model and training settings the user gave (``None``: the dataset's profile), typed: click's values of
    the options named after :class:`~medseg_mem.core.changes.ModelChanges` / ``TrainChanges`` fields, with
    ``--skip-empty-slabs`` / ``--any-slab`` folded into ``--foreground-oversample``."""
    oversample = slab_alias(options.pop("skip_empty_slabs"), options.pop("foreground_oversample"))
    model = ModelChanges(**{name: options.pop(name) for name in MODEL_CHANGES})
    train = TrainChanges(foreground_oversample=oversample, **{name: options.pop(name) for name in TRAIN_CHANGES})
    return RunChanges(model, train)


def inference_options(options: dict):
    """Take the evaluation's options out of ``options``: an :class:`InferenceConfig` (fp32 placeholder) and the
    ``--inference-precision`` (``None``: the training precision). They may be given with ``--resume``."""
    from medseg_mem.core.config import InferenceConfig

    overlap, sw_batch_size = options.pop("overlap"), options.pop("sw_batch_size")
    mirroring = tta_config(options.pop("tta"), options.pop("tta_axes"))
    inference = InferenceConfig(sw_batch_size=sw_batch_size or 1, overlap=overlap or 0.0, **mirroring)
    return inference, options.pop("inference_precision")


def check_network_options(changes: RunChanges, variants) -> None:
    """Refuse ``--deep-supervision`` with a ``--channels`` list too shallow for it, and ``--snapshots`` of a cascade
    with ``--stage2-guidance predicted``, before any data is read.

    Raises:
        OptionError: from :class:`~medseg_mem.core.config.ModelConfig` / ``TrainConfig``, naming the option.
    """
    from medseg_mem.core.config import ModelConfig, TrainConfig

    model, train = changes.model, changes.train
    if model.deep_supervision and model.channels is not None:
        ModelConfig(channels=model.channels, deep_supervision=True)
    if train.stage2_guidance == "predicted" and train.snapshots and variants != ("auto",):
        from medseg_mem.runner.variant import check_snapshots
        from medseg_mem.variants import resolve_variants

        predicted = TrainConfig(stage2_guidance="predicted", time_limit=train.time_limit, snapshots=train.snapshots)
        check_snapshots(resolve_variants(list(variants)), predicted)


def slab_alias(skip: Optional[bool], oversample: Optional[float]) -> Optional[float]:
    """``--foreground-oversample``, or ``--skip-empty-slabs`` / ``--any-slab`` as its older spelling (1 / 0).

    Raises:
        click.UsageError: both spellings are given.
    """
    if skip is None:
        return oversample
    if oversample is not None:
        raise click.UsageError("--skip-empty-slabs/--any-slab is the older spelling of --foreground-oversample 1 / 0; "
                               "give one of them")
    return 1.0 if skip else 0.0


def lever_notices(changes: RunChanges):
    """What a training-memory lever does not do, said once, so nobody expects it in the inference figures."""
    notices = []
    if changes.train.checkpointing:
        notices.append(("--checkpointing", "lowers training memory only; evaluation, the results' peak memory and "
                                           "predict run without it"))  # fmt: skip
    return notices
