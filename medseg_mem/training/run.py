"""``medseg-mem run``: train every stage of each chosen variant, evaluate on the test split, append to the CSV.

Flow per variant: train each stage on samples streamed from the prepared cases
(:class:`~medseg_mem.training.sampling.StageData`; best checkpoint kept on validation Dice), evaluate the whole
variant with the best checkpoints on the test split one case at a time (per-class Dice on the reconstructed full
volume, seconds per case), measure peak inference memory on the largest test case
(:func:`medseg_mem.memory.measure.measure_peak`), and append one row per foreground class to the results CSV.
With ``--snapshots``, each snapshot the variant reached (:mod:`~medseg_mem.training.wallclock`) is evaluated the
same way and filed as rows of its own (``budget_seconds`` = the mark; their peak memory is the final model's,
not measured again: the networks are the same size).
No split is ever loaded whole: host memory does not grow with the number of cases.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from medseg_mem import __version__
from medseg_mem.config import InferenceConfig, ModelConfig, RunRequest, TrainConfig, tta_text
from medseg_mem.data.prepared import SPLITS, PreparedDataset
from medseg_mem.device import resolve_device
from medseg_mem.errors import MedsegError
from medseg_mem.evaluate import Evaluation, evaluate_variant
from medseg_mem.memory.measure import MemoryReading, measure_peak
from medseg_mem.memory.units import format_bytes
from medseg_mem.models.build import load_networks
from medseg_mem.results import append_rows, new_run_id, read_results, utc_timestamp
from medseg_mem.training import distributed
from medseg_mem.training.class_weights import class_weights
from medseg_mem.training.loop import StageJob, StageOutcome, train_stage
from medseg_mem.training.sampling import CaseStream, StageData, open_case
from medseg_mem.names import DEFAULT_RUNS
from medseg_mem.training.resume import filed_rows, resumed_request, same_path
from medseg_mem.training.settings import load_run_record, resolve_settings, write_run_record
from medseg_mem.training.wallclock import Clock, Snapshot, describe, record_training, recorded_training, stage_times
from medseg_mem.variants import get_variant, resolve_variants, warn_thick_slabs
from medseg_mem.writable import check_output_file, check_output_folder


@dataclass(frozen=True)
class VariantResult:
    run_id: str
    variant: str
    evaluation: Evaluation
    memory: MemoryReading
    train_steps: int
    train_seconds: float
    budget_seconds: Optional[int] = None  # a snapshot's mark; None for the final model


def train_variant(
    name, run_dir, dataset, model, train, device, progress, weights=None, clock: Clock = time.perf_counter
) -> Dict[str, StageOutcome]:
    """Train each stage of variant ``name`` (loss class ``weights``, if any), each to its share of the time limit
    and snapshot marks (:func:`~medseg_mem.training.wallclock.stage_times`); return ``{stage name: outcome}``."""
    variant, num_classes = get_variant(name), dataset.num_classes
    stages, outcomes = variant.stages(), {}
    for index, stage in enumerate(stages):
        job = StageJob(
            variant=name,
            stage=stage,
            in_channels=stage.in_channels(dataset.in_channels, num_classes, model),
            num_classes=num_classes,
            model=model,
            train=train,
            data=StageData(dataset, stage, model, train, stage_index=index, progress=progress),
            folder=run_dir / stage.name,
            device=device,
            meta=checkpoint_meta(dataset),
            seed_offset=index,
            class_weights=weights,
            times=stage_times(train, list(outcomes.values()), len(stages)),
        )
        outcomes[stage.name] = train_stage(job, progress=progress, clock=clock)
    return outcomes


def checkpoint_meta(dataset: PreparedDataset) -> dict:
    """What predict needs to preprocess new scans and name the classes (stored in every checkpoint)."""
    manifest = dataset.manifest
    return {
        "dataset": dataset.name,
        "class_names": list(dataset.class_names),
        "modalities": list(dataset.modalities),
        "preprocessing": manifest.get("settings", manifest.get("preprocessing", {})),
        "package_version": __version__,
    }


def memory_setup(variant_name: str, paths: Dict[str, str], image, model: ModelConfig, num_classes: int, device: str,
                 inference: InferenceConfig = InferenceConfig()):  # fmt: skip
    """Top-level (picklable) setup for :func:`measure_peak`: load the variant, return its inference call."""
    torch_device = torch.device(device)
    nets = load_networks({k: Path(v) for k, v in paths.items()}, torch_device, inference.channels_last)
    variant, image = get_variant(variant_name), torch.as_tensor(image).to(torch_device)

    def infer():
        with torch.inference_mode():
            return variant.segment(nets, image, model, num_classes, inference=inference)

    return infer


def measure_variant_memory(name, paths, dataset: PreparedDataset, model, num_classes, device,
                           inference: InferenceConfig = None) -> MemoryReading:  # fmt: skip
    """Peak inference memory of the whole variant on the largest test case."""
    image = np.array(open_case(dataset, dataset.largest("test"))[0])[None]
    args = (name, {k: str(v) for k, v in paths.items()}, image, model, num_classes, device.type, inference)
    return measure_peak(memory_setup, args, device.type)


def result_rows(result: VariantResult, dataset, model: ModelConfig, train: TrainConfig, device,
                inference: InferenceConfig = InferenceConfig()) -> List[dict]:  # fmt: skip
    """One tidy row per foreground class, run-level columns repeated."""
    slabs = result.variant != "full"
    run = {
        "run_id": result.run_id, "timestamp": utc_timestamp(), "dataset": dataset.name, "variant": result.variant,
        "peak_memory_bytes": result.memory.peak_bytes, "memory_method": result.memory.method,
        "device": str(device), "inference_seconds_per_case": result.evaluation.seconds_per_case,
        "train_steps": result.train_steps, "train_seconds": round(result.train_seconds, 2), "seed": train.seed,
        "channels": "-".join(map(str, model.channels)), "loss": train.loss + ("+batch" if train.batch_dice else ""),
        "slab_size": model.slab_size if slabs else "",
        "downsample": model.downsample if result.variant == "cascade" else "",
        "n_test_cases": result.evaluation.n_cases, "package_version": __version__, "source": "run",
        "precision": train.precision, "checkpointing": train.checkpointing, "channels_last": train.channels_last,
        "inference_precision": inference.precision, "overlap": inference.overlap if slabs else "",
        "sw_batch_size": inference.sw_batch_size if slabs else "",
        "budget_seconds": result.budget_seconds,
        "time_limit_seconds": None if train.time_limit is None else round(train.time_limit * 60, 3),
        "deep_supervision": model.deep_supervision, "tta": tta_text(inference.mirror_axes),
        "optimizer": train.optimizer, "augment": train.augment,
        "foreground_oversample": train.foreground_oversample if slabs else "",
    }  # fmt: skip
    names = dataset.class_names[1:]
    return [
        {**run, "class_name": names[i], "class_index": i + 1, "dice": round(d, 6)}
        for i, d in enumerate(result.evaluation.dice)
    ]


def run_variants(request: RunRequest, echo: Callable[[str], None] = print,
                 clock: Clock = time.perf_counter) -> List[VariantResult]:  # fmt: skip
    """Train, select, evaluate and record each requested variant (see the module docstring).

    A resumed run that is finished already (its rows are in the results CSV) is reported, not evaluated again.
    Under ``torchrun`` every process trains (:mod:`~medseg_mem.training.distributed`); only rank 0 prints, writes
    ``run.json``, checkpoints and the results CSV, evaluates and measures memory, and only it returns results.
    ``clock`` is the wall clock of ``--time-limit`` and ``--snapshots`` (tests pass a fake one).

    Raises:
        MedsegError: missing/malformed prepared data or results CSV, an output folder that cannot be written,
            unknown variant, unusable device; a failure after training names the run to resume.
    """
    joined = distributed.start()
    try:
        results = run_all(request, echo if distributed.is_main() else lambda *_: None, clock)
    except BaseException:
        distributed.stop(clean=False)  # torchrun ends the other ranks once this one exits
        raise
    if joined:
        distributed.stop()
    return results


def run_all(request: RunRequest, echo: Callable[[str], None], clock: Clock = time.perf_counter) -> List[VariantResult]:
    """:func:`run_variants` in this process (one rank of several under torchrun)."""
    request, record = resolved(request)
    if record is not None and finished(request, echo):
        return []
    dataset = open_dataset(request)
    check_splits(dataset)
    check_outputs(request)
    jobs = distributed.from_main(planned_runs(request, dataset, record, echo) if distributed.is_main() else None)
    warn_thick_slabs(jobs, dataset, echo)  # once per run: slabs thicker than the cases are padded
    device = distributed.local_device(resolve_device(jobs[0][2].device))
    sizes = ", ".join(f"{split} {len(dataset.ids(split))}" for split in SPLITS)
    echo(f"{dataset.name}: {sizes} cases (streamed from disk); device {device}")
    weights = class_weights(jobs[0][2].class_weights, dataset)  # one pass over the labels for every variant
    results = [run_one(run_id, name, model, train, dataset, request, device, echo, weights, clock)
               for run_id, name, train, model in jobs]  # fmt: skip
    if not distributed.is_main():
        return []
    from medseg_mem.report import format_table

    echo(format_table(read_results(request.results).query("dataset == @dataset.name")))
    return results


def resolved(request: RunRequest) -> Tuple[RunRequest, Optional[dict]]:
    """A new run as asked; a resumed one with its ``run.json`` and its saved dataset (and results CSV)."""
    if not request.resume:
        return request, None
    record = load_run_record(request.runs_dir / request.resume)
    return resumed_request(request, record), record


def finished(request: RunRequest, echo: Callable[[str], None]) -> bool:
    """True (and said) when the resumed run's rows are in the results CSV already."""
    rows = filed_rows(request.results, str(request.resume))
    if rows:
        echo(f"run {request.resume} is finished: its {rows} row(s) are in {request.results}; nothing to resume "
             "(start a new run to train again)")
    return rows > 0


def check_outputs(request: RunRequest) -> None:
    """Refuse unwritable ``--runs`` / ``--results`` locations and a malformed results CSV before any training."""
    check_output_file(request.results, "--results")
    check_output_folder(request.runs_dir / (request.resume or ""), "--runs")
    if request.results.is_file() and request.results.read_bytes().strip():
        read_results(request.results)  # refuse a malformed CSV before hours of training, not after


def open_dataset(request: RunRequest) -> PreparedDataset:
    """The prepared dataset; for a resumed run, an error says it is the one ``run.json`` names."""
    try:
        return PreparedDataset.open(request.data_dir)
    except MedsegError as error:
        if not request.resume:
            raise
        raise MedsegError(f"--resume {request.resume}: the run's dataset (data_dir in run.json) cannot be opened: "
                          f"{error}") from error


def check_splits(dataset: PreparedDataset) -> None:
    """Every split must hold a case before training starts, not after."""
    for split in SPLITS:
        if not dataset.ids(split):
            raise MedsegError(f"{dataset.root}: the {split} split is empty; prepare a dataset with more cases")


def planned_runs(request: RunRequest, dataset: PreparedDataset, record: Optional[dict] = None, echo=print):
    """(run id, variant, train config, model config) for each run: new ones, or the one being resumed
    (``--variant auto``: the one :func:`~medseg_mem.training.auto.auto_variant` picks, said with ``echo``)."""
    if record is not None:
        return [(request.resume, record["variant"], record["train"], record["model"])]
    model, train = resolve_settings(request, dataset)
    if tuple(request.variants) == ("auto",):
        from medseg_mem.training.auto import auto_variant

        names = [auto_variant(request, dataset, model, train, resolve_device(train.device).type, echo)]
    else:
        names = resolve_variants(list(request.variants))
    return [(new_run_id(name), name, train, model) for name in names]


def run_one(run_id, name, model, train, dataset, request, device, echo, weights=None,
            clock: Clock = time.perf_counter) -> Optional[VariantResult]:  # fmt: skip
    run_dir = request.runs_dir / run_id
    info = {"run_id": run_id, "variant": name, "data_dir": os.path.abspath(request.data_dir),
            "results": os.path.abspath(request.results)}  # fmt: skip
    main = distributed.is_main()
    if main:  # a resumed run's record keeps what its training recorded
        write_run_record(run_dir, {**info, **recorded_training(run_dir)}, model, train)
    echo(f"[{name}] run {run_id}: {run_settings(model, train)}{describe(train)}")
    if weights is not None:
        echo(f"[{name}] class weights ({train.class_weights}, from the train split): "
             + ", ".join(f"{n} {w:g}" for n, w in zip(dataset.class_names, weights)))
    with resumable(run_id, request, "stopped at its last checkpoint", "continues it"):
        outcomes = train_variant(name, run_dir, dataset, model, train, device, request.progress and main, weights,
                                 clock)  # fmt: skip
    if not main:
        return None  # rank 0 evaluates, measures and files the rows
    paths = {stage: outcome.best_path for stage, outcome in outcomes.items()}
    steps, seconds = sum(o.steps for o in outcomes.values()), sum(o.seconds for o in outcomes.values())
    snapshots = record_training(run_dir, info, model, train, outcomes, echo)
    inference = request.evaluation(train)
    with resumable(run_id, request, "finished training", "evaluates it and files the rows without training again"):
        evaluation = evaluate_checkpoints(name, paths, dataset, model, device, inference)
        memory = measure_variant_memory(name, paths, dataset, model, dataset.num_classes, device, inference)
        result = VariantResult(run_id, name, evaluation, memory, steps, seconds)
        rows = result_rows(result, dataset, model, train, device, inference)
        for snapshot in snapshots:
            rows += result_rows(evaluate_snapshot(result, snapshot, dataset, model, device, inference, echo),
                                dataset, model, train, device, inference)  # fmt: skip
        append_rows(request.results, rows)
    dice = ", ".join(f"{n} {d:.3f}" for n, d in zip(dataset.class_names[1:], evaluation.dice))
    echo(f"[{name}] test Dice {dice} (inference {inference.describe()}); peak memory "
         f"{format_bytes(memory.peak_bytes)} ({memory.method}); {evaluation.seconds_per_case:.3f} s/case")
    return result


def evaluate_checkpoints(name, paths, dataset, model, device, inference: InferenceConfig) -> Evaluation:
    """Segment the test split with variant ``name`` made of the stage checkpoints ``paths`` and score it."""
    nets = load_networks(paths, device, inference.channels_last)
    return evaluate_variant(get_variant(name), nets, CaseStream(dataset, "test"), model, dataset.num_classes,
                            device, inference)  # fmt: skip


def evaluate_snapshot(final: VariantResult, snapshot: Snapshot, dataset, model, device, inference,
                      echo) -> VariantResult:  # fmt: skip
    """The variant as it was at a snapshot mark, evaluated like the final model; its memory is the final one's."""
    evaluation = evaluate_checkpoints(final.variant, snapshot.paths, dataset, model, device, inference)
    dice = ", ".join(f"{n} {d:.3f}" for n, d in zip(dataset.class_names[1:], evaluation.dice))
    echo(f"[{final.variant}] snapshot at {snapshot.mark / 60:g} min ({snapshot.steps} steps, "
         f"{snapshot.seconds / 60:.2f} min trained): test Dice {dice}")
    return VariantResult(final.run_id, final.variant, evaluation, final.memory, snapshot.steps, snapshot.seconds,
                         budget_seconds=snapshot.mark)  # fmt: skip


def run_settings(model: ModelConfig, train: TrainConfig) -> str:
    """The header line's settings, e.g. ``channels 4-8, 2 steps/stage, loss dice_ce, fp32, seed 0``; the levers
    and nnU-Net's recipe options are named when they are on (``sgd lr 0.01, augment nnunet, ...``)."""
    parts = [f"channels {'-'.join(map(str, model.channels))}", f"{train.steps} steps/stage", f"loss {train.loss}",
             train.precision]  # fmt: skip
    optional = {
        "deep supervision": model.deep_supervision,
        "checkpointing": train.checkpointing,
        "channels-last": train.channels_last,
        f"sgd lr {train.lr:g}": train.optimizer == "sgd",
        f"augment {train.augment}": train.augment != "none",
        f"foreground oversample {train.foreground_oversample:g}": train.foreground_oversample > 0,
    }
    return ", ".join(parts + [text for text, shown in optional.items() if shown] + [f"seed {train.seed}"])


@contextlib.contextmanager
def resumable(run_id: str, request: RunRequest, state: str, resume_does: str) -> Iterator[None]:
    """A failure while training (a checkpoint write) or after it (evaluation, measurement, writing the rows)
    says how to go on without losing work: the checkpoints stay, and ``--resume`` picks them up.

    Args:
        state: where the run stands, e.g. "finished training".
        resume_does: what ``--resume`` will then do, e.g. "continues it".
    """
    try:
        yield
    except (MedsegError, OSError) as error:
        runs = "" if same_path(request.runs_dir, DEFAULT_RUNS) else f" --runs {request.runs_dir}"
        raise MedsegError(
            f"{error}; run {run_id} {state}, its checkpoints are kept in {request.runs_dir / run_id}: once that "
            f"is fixed, `medseg-mem run --resume {run_id}{runs}` {resume_does}"
        ) from error
