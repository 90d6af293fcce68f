"""``medseg-mem run``: train every stage of each chosen variant, evaluate on the test split, append to the CSV.

Flow per variant: train each stage on samples streamed from the prepared cases
(:class:`~medseg_mem.training.sampling.StageData`; best checkpoint kept on validation Dice), evaluate the whole
variant with the best checkpoints on the test split one case at a time (per-class Dice on the reconstructed full
volume, seconds per case), measure peak inference memory on the largest test case
(:func:`medseg_mem.memory.measure.measure_peak`), and append one row per foreground class to the results CSV.
With ``--snapshots``, each snapshot the variant reached (:mod:`~medseg_mem.training.wallclock`) is evaluated the
same way and filed as rows of its own (``budget_seconds`` = the mark; their peak memory is the final model's,
not measured again: the networks are the same size). Training (:mod:`~medseg_mem.runner.variant`) and the
test evaluation with the rows it is filed as (:mod:`~medseg_mem.runner.evaluation`) have modules of their own.
No split is ever loaded whole: host memory does not grow with the number of cases.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Callable, Iterator, List, Optional, Tuple

from medseg_mem.core.config import ModelConfig, RunRequest, TrainConfig
from medseg_mem.core.device import resolve_device
from medseg_mem.core.errors import MedsegError
from medseg_mem.core.locations import default_runs
from medseg_mem.core.units import format_bytes
from medseg_mem.data.fingerprint import fingerprint
from medseg_mem.data.prepared import SPLITS, PreparedDataset
from medseg_mem.inference.metrics import dice_text
from medseg_mem.inference.mirror import unmirrored_note
from medseg_mem.report.results import append_rows, new_run_id, read_results
from medseg_mem.training import distributed
from medseg_mem.training.class_weights import class_weights
from medseg_mem.training.divergence import Diverged
from medseg_mem.runner.evaluation import (
    VariantResult,
    evaluate_checkpoints,
    evaluate_snapshot,
    measure_variant_memory,
    result_rows,
)
from medseg_mem.core.files.writable import check_output_file, check_output_folder
from medseg_mem.runner.resume import filed_rows, resumed_request, same_path
from medseg_mem.runner.settings import RunJob, load_run_record, resolve_settings, write_run_record
from medseg_mem.runner.snapshots import describe, record_training, recorded_training, with_recorded_peaks
from medseg_mem.runner.variant import check_snapshots, stage_names, train_variant
from medseg_mem.training.wallclock import Clock
from medseg_mem.variants import resolve_variants, warn_thick_slabs


def run_variants(request: RunRequest, echo: Callable[[str], None] = print,
                 clock: Clock = time.perf_counter) -> List[VariantResult]:  # fmt: skip
    """Train, select, evaluate and record each requested variant (see the module docstring).

    A resumed run that is finished already (its rows are in the results CSV) is reported, not evaluated again.
    Under ``torchrun`` every process trains (:mod:`~medseg_mem.training.distributed`); only rank 0 prints, writes
    ``run.json``, checkpoints and the results CSV, evaluates and measures memory, and only it returns results.
    ``clock`` is the wall clock of ``--time-limit`` and ``--snapshots`` (tests pass a fake one). glibc's allocator
    is pinned as ``predict`` and ``measure_peak`` pin it, so the process's memory follows the live tensors, as the
    plan counts them (left to itself glibc keeps freed blocks of up to 32 MiB: the embedded default's full run
    grew by 110 MiB over its first step and kept growing).

    Raises:
        MedsegError: missing/malformed prepared data or results CSV, an output folder that cannot be written,
            unknown variant, unusable device; a failure after training names the run to resume.
    """
    from medseg_mem.memory.rss import pin_glibc_allocator

    pin_glibc_allocator()
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
    needs, init = {}, starting_point(request, dataset, record)
    if distributed.is_main():
        jobs, needs = planned_runs(request, dataset, record, echo, init)
    jobs = distributed.from_main(jobs if distributed.is_main() else None)
    first = jobs[0]
    device = distributed.local_device(resolve_device(first.train.device))
    sizes = ", ".join(f"{split} {len(dataset.ids(split))}" for split in SPLITS)
    echo(f"{dataset.name}: {sizes} cases (streamed from disk); device {device}")
    weights = class_weights(first.train.class_weights, dataset)  # one pass over the labels for every variant
    results = [run_one(run_id, name, model, train, dataset, request, device, echo, weights, clock, needs.get(run_id),
                       init) for run_id, name, train, model in jobs]  # fmt: skip
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


def starting_point(request: RunRequest, dataset: PreparedDataset, record: Optional[dict]):
    """The trained run whose weights each stage starts from (:mod:`~medseg_mem.runner.init_from`): ``--init-from``,
    or what a resumed run's ``run.json`` recorded; ``None`` for random weights."""
    from medseg_mem.runner.init_from import initial_weights

    if record is not None:
        recorded = record.get("init_from_dir")
        return initial_weights(request, dataset, recorded) if recorded else None
    return initial_weights(request, dataset) if request.init_from else None


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
            raise MedsegError(f"{dataset.root}: the {split} split is empty; prepare a dataset with more cases, or put "
                              f"cases in {split} in its splits.json")  # fmt: skip


def planned_runs(request: RunRequest, dataset: PreparedDataset, record: Optional[dict] = None, echo=print, init=None):
    """``(jobs, needs)``: a :class:`~medseg_mem.runner.settings.RunJob` for each run - new ones, or the one being
    resumed (``--variant auto``: the one :func:`~medseg_mem.runner.auto.auto_variant` picks, said with ``echo``)
    - and each run's planned memory (:func:`~medseg_mem.runner.guard.guard`), checked against the budget before
    any training unless ``request.memory_check`` is off. A run fine-tuned from ``init``
    (:class:`~medseg_mem.runner.init_from.InitFrom`) trains that run's variant and network.

    Raises:
        MemoryGuardError: a run's plan does not fit the budget (one line with the levers' figures).
    """
    from medseg_mem.runner.guard import guard, memory_check

    auto = record is None and tuple(request.variants) == ("auto",)
    if record is not None:
        jobs = [RunJob(request.resume, record["variant"], record["train"], record["model"])]
        model, train = record["model"], record["train"]
    else:
        model, train = resolve_settings(request, dataset)
        model = model if init is None else init.model
        names = [] if auto else [init.variant] if init is not None else resolve_variants(list(request.variants))
        jobs = [RunJob(new_run_id(name), name, train, model) for name in names]
    checked(jobs, train, dataset, echo)
    check = memory_check(resolve_device(train.device).type, request.budget_bytes, echo)
    nproc = distributed.world_size()
    if auto:
        from medseg_mem.runner.auto import auto_variant

        name, found = auto_variant(request, dataset, model, train, check, echo, nproc)
        jobs = checked([RunJob(new_run_id(name), name, train, model)], train, dataset, echo)
        return jobs, {jobs[0].run_id: found}
    return jobs, guard(check, jobs, dataset, request, nproc, echo, refuse=request.memory_check)


def checked(jobs, train: TrainConfig, dataset: PreparedDataset, echo):
    """``jobs`` after refusing ``--snapshots`` that their variants cannot take (one line, before any training) and
    saying once that slabs thicker than the cases are padded."""
    check_snapshots([job.variant for job in jobs], train)
    warn_thick_slabs(jobs, dataset, echo)
    return jobs


def run_one(run_id, name, model, train, dataset, request, device, echo, weights=None,
            clock: Clock = time.perf_counter, need=None, init=None) -> Optional[VariantResult]:  # fmt: skip
    run_dir = request.runs_dir / run_id
    info = {"run_id": run_id, "variant": name, "data_dir": os.path.abspath(request.data_dir),
            "results": os.path.abspath(request.results), "dataset_fingerprint": fingerprint(dataset),
            **init_record(init)}  # fmt: skip
    main, earlier = distributed.is_main(), recorded_training(run_dir)
    if main:  # a resumed run's record keeps what its training recorded
        write_run_record(run_dir, {**info, **earlier}, model, train)
    echo(f"[{name}] run {run_id}: {run_settings(model, train, name)}{describe(train)}"
         + (f"; fine-tuned from run {init.run_id}" if init is not None else ""))
    if weights is not None:
        echo(f"[{name}] class weights ({train.class_weights}, from the train split): "
             + ", ".join(f"{n} {w:g}" for n, w in zip(dataset.class_names, weights)))
    with resumable(run_id, request, "stopped at its last checkpoint", "continues it"):
        outcomes = train_variant(name, run_dir, dataset, model, train, device, request.progress and main, weights,
                                 clock, init=None if init is None else init.checkpoints)  # fmt: skip
    if not main:
        return None  # rank 0 evaluates, measures and files the rows
    outcomes = with_recorded_peaks(outcomes, earlier)
    paths = {stage: outcomes[stage].best_path for stage in stage_names(outcomes, name)}
    steps, seconds = sum(o.steps for o in outcomes.values()), sum(o.seconds for o in outcomes.values())
    snapshots = record_training(run_dir, info, model, train, outcomes, echo)
    inference = request.evaluation(train)
    note = unmirrored_note(train.augment, inference.mirror_axes)
    if note:
        echo(f"[{name}] {note}")
    with resumable(run_id, request, "finished training", "evaluates it and files the rows without training again"):
        evaluation = evaluate_checkpoints(name, paths, dataset, model, device, inference)
        memory = measure_variant_memory(name, paths, dataset, model, dataset.num_classes, device, inference)
        result = VariantResult(run_id, name, evaluation, memory, steps, seconds,
                               train_peak_bytes=max(o.peak_bytes for o in outcomes.values()),
                               train_process_peak_bytes=max(o.process_peak_bytes for o in outcomes.values()),
                               need=need, val_dice=outcomes[list(paths)[-1]].best_score,
                               init_from=None if init is None else init.run_id)  # fmt: skip
        rows = result_rows(result, dataset, model, train, device, inference)
        for snapshot in snapshots:
            rows += result_rows(evaluate_snapshot(result, snapshot, dataset, model, device, inference, echo),
                                dataset, model, train, device, inference)  # fmt: skip
        append_rows(request.results, rows)
    dice = dice_text(dataset.class_names[1:], evaluation.dice)
    echo(f"[{name}] test Dice {dice} (inference {inference.describe()}); {evaluation.seconds_per_case:.3f} s/case; "
         f"{memory_line(result)}")
    return result


def init_record(init) -> dict:
    """What ``run.json`` records of the run a fine-tuned run started from (its id, and its folder for --resume)."""
    if init is None:
        return {}
    return {"init_from": init.run_id, "init_from_dir": os.path.abspath(init.run_dir)}


def memory_line(result: VariantResult) -> str:
    """``peak resident memory of the process: inference 412 MiB (planned 430 MiB), training 388 MiB (planned
    401 MiB); the inference added 195 MiB, training 70 MiB``: the whole process first, what the work added after."""
    need = result.need

    def figure(measured: Optional[int], planned: Optional[int]) -> str:
        plan = f" (planned {format_bytes(planned)})" if planned else ""
        return (format_bytes(measured) if measured else "not measured") + plan

    inference = figure(result.memory.process_bytes, need.evaluation.process_bytes if need else None)
    training = figure(result.train_process_peak_bytes, need.training.process_bytes if need else None)
    added = f"{format_bytes(result.memory.peak_bytes)}, training {format_bytes(result.train_peak_bytes or 0)}"
    return (f"peak resident memory of the process: inference {inference}, training {training}; the inference "
            f"added {added}")


def run_settings(model: ModelConfig, train: TrainConfig, variant: str) -> str:
    """The header line's settings, e.g. ``channels 4-8, 2 steps/stage, lr 0.003 poly, loss dice_ce, fp32, seed 0``;
    the levers and nnU-Net's recipe options are named when they are on (``sgd, augment nnunet, ...``), and the
    cascade's own (stage-2 guidance) only for the cascade."""
    cascade = variant == "cascade"
    steps = f"{train.steps} steps/stage" + (" at most" if train.time_limit is not None else "")
    parts = [f"channels {'-'.join(map(str, model.channels))}", steps, f"lr {train.lr:g} {train.lr_schedule}",
             f"loss {train.loss}", train.precision]  # fmt: skip
    optional = {
        "deep supervision": model.deep_supervision,
        "checkpointing": train.checkpointing,
        "channels-last": train.channels_last,
        "sgd": train.optimizer == "sgd",
        f"augment {train.augment}": train.augment != "none",
        f"foreground oversample {train.foreground_oversample:g}": train.foreground_oversample > 0,
        f"stage-2 guidance predicted ({train.guidance_folds} folds)": cascade and train.stage2_guidance == "predicted",
        f"guidance noise {train.guidance_noise:g}": cascade and train.guidance_noise > 0,
    }
    return ", ".join(parts + [text for text, shown in optional.items() if shown] + [f"seed {train.seed}"])


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run: still a ``KeyboardInterrupt`` (callers stop as before), whose message names the run and
    the ``--resume`` command that continues it (``medseg-mem run`` prints it as its one error line)."""


@contextlib.contextmanager
def resumable(run_id: str, request: RunRequest, state: str, resume_does: str) -> Iterator[None]:
    """A failure while training (a checkpoint write) or after it (evaluation, measurement, writing the rows), or
    an interruption (Ctrl-C), says how to go on without losing work: the checkpoints stay, and ``--resume`` picks
    them up. A diverged training (:class:`~medseg_mem.training.divergence.Diverged`) is said as it is: resuming
    would diverge again.

    Args:
        state: where the run stands, e.g. "finished training".
        resume_does: what ``--resume`` will then do, e.g. "continues it".
    """
    runs = "" if same_path(request.runs_dir, default_runs()) else f" --runs {request.runs_dir}"
    where = f"its checkpoints are kept in {request.runs_dir / run_id}"
    try:
        yield
    except Diverged:
        raise
    except KeyboardInterrupt as error:
        raise RunInterrupted(f"interrupted (Ctrl-C): run {run_id} {state}, {where}; "
                             f"`medseg-mem run --resume {run_id}{runs}` {resume_does}") from error  # fmt: skip
    except (MedsegError, OSError) as error:
        raise MedsegError(
            f"{error}; run {run_id} {state}, {where}: once that is fixed, `medseg-mem run --resume {run_id}{runs}` "
            f"{resume_does}"
        ) from error
