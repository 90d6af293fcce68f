"""One training loop for any stage: streamed batches, precision, validation, best/last checkpoints, resume.

The loop never asks which variant it serves: a :class:`StageJob` says what to train and where its data comes
from (:class:`~medseg_mem.training.sampling.StageData`). The best checkpoint (highest mean validation Dice over
the foreground classes) is what evaluation uses; ``last.pt`` is the resume point, written after every validation.
A stage may also train to a wall clock (:mod:`~medseg_mem.training.wallclock`): it stops at the first step that
ends at or past its time limit, validates there, and keeps the best checkpoint at each snapshot mark it passes
(validating there first). The clock counts the periodic validations (``val_every``), as nnU-Net's wall clock
does, but not a validation made only for a snapshot, so measuring a curve does not shorten the training it
measures. The clock is a parameter, so tests drive it without waiting. Each stage logs its curves (``log.csv``,
``progress.png``, TensorBoard events when installed: :mod:`~medseg_mem.training.curves`) in its folder.
Everything random is seeded from the run's seed before the network is built, so the same seed on the same
machine gives the same weights bit for bit.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager, Dict, List, Optional, Sequence, Tuple

import torch
from monai.losses import DiceCELoss, DiceLoss
from tqdm.auto import tqdm

from medseg_mem.core.config import ModelConfig, TrainConfig
from medseg_mem.core.files.checkpoint import load_checkpoint, save_checkpoint
from medseg_mem.core.precision import grad_scaler
from medseg_mem.core.units import dice_percent
from medseg_mem.inference.metrics import dice_per_class, mean_dice, overall_dice
from medseg_mem.models.build import build_network
from medseg_mem.models.deep_supervision import DeepSupervisionLoss
from medseg_mem.training import distributed
from medseg_mem.training.checkpoints import payload, resume_state
from medseg_mem.training.curves import StageLog
from medseg_mem.training.divergence import check_loss, check_weights
from medseg_mem.training.optimizer import build_optimizer
from medseg_mem.training.seeding import seed_everything
from medseg_mem.training.step import learning_rate, set_learning_rate, train_step
from medseg_mem.training.wallclock import Clock, StageTimes, snapshot_path
from medseg_mem.variants.base import Stage, StageInference


@dataclass
class StageJob:
    """Everything needed to train one stage. ``meta`` is stored in checkpoints (classes, preprocessing …).

    ``data`` provides ``batches(first_step)`` (training batches from that step on), ``validation_ids()`` and
    ``validation_pair(case_id, device)`` (a val case's whole-volume input and label), e.g. a
    :class:`~medseg_mem.training.sampling.StageData`. ``times`` is the stage's share of the variant's time limit
    and snapshot marks (default: neither). ``init_weights``: a checkpoint whose weights a stage that has not
    trained yet starts from (``run --init-from``), instead of random ones.
    """

    variant: str
    stage: Stage
    in_channels: int
    num_classes: int
    model: ModelConfig
    train: TrainConfig
    data: Any
    folder: Path
    device: torch.device
    meta: Dict[str, Any] = field(default_factory=dict)
    seed_offset: int = 0
    class_weights: Optional[Tuple[float, ...]] = None
    times: StageTimes = field(default_factory=StageTimes)
    init_weights: Optional[Path] = None


@dataclass(frozen=True)
class StageOutcome:
    """How a stage trained; ``snapshots`` maps each mark it passed (seconds) to ``{"seconds", "step"}``;
    ``peak_bytes``: the memory its training added at its peak, when measured (``runner.variant.measured``);
    ``process_peak_bytes``: the whole process at that peak (CPU: resident size; CUDA: memory reserved)."""

    best_path: Path
    best_score: float
    best_step: int
    steps: int
    seconds: float
    history: List[Dict[str, Any]]
    snapshots: Dict[int, Dict[str, float]] = field(default_factory=dict)
    peak_bytes: int = 0
    process_peak_bytes: int = 0


def make_loss(
    stage: Stage, train: TrainConfig, weights: Optional[Tuple[float, ...]] = None, model: Optional[ModelConfig] = None
) -> torch.nn.Module:
    """Dice (thesis) or Dice + cross-entropy (nnU-Net), on softmax outputs, background per the stage, with
    optional class ``weights`` (one per class, background included); summed over every resolution when ``model``
    has deep supervision (:class:`~medseg_mem.models.deep_supervision.DeepSupervisionLoss`)."""
    loss = plain_loss(stage, train, weights)
    if model is None or not model.deep_supervision:
        return loss
    return DeepSupervisionLoss(loss, outputs=len(model.channels) - 1)


def plain_loss(stage: Stage, train: TrainConfig, weights: Optional[Tuple[float, ...]] = None) -> torch.nn.Module:
    """The loss of one output: see :func:`make_loss`."""
    options = dict(include_background=stage.include_background, to_onehot_y=True, softmax=True, batch=train.batch_dice)
    weight = None if weights is None else torch.tensor(weights, dtype=torch.float32)
    if train.loss == "dice_ce":
        return DiceCELoss(weight=weight, **options)
    if weight is not None and not stage.include_background:
        weight = weight[1:]
    return DiceLoss(weight=weight, **options)


def improves(mean: float, state: Dict[str, Any]) -> bool:
    """Whether a validation's ``mean`` Dice beats the best so far. The first validation always counts; a NaN mean
    (no class in any validation case) counts below every score."""
    best = state["best_score"]
    return state["best_step"] == 0 or (mean == mean and (best != best or mean > best))


def validate(job: StageJob, net: torch.nn.Module) -> List[float]:
    """Mean Dice per foreground class of this stage's own output on the validation cases (one at a time); a class
    absent from a case's label and prediction is left out of its mean (NaN when no case scores it)."""
    net.eval()
    run = StageInference(job.stage, net, job.model, device="cpu")
    with torch.inference_mode():
        scores = [case_dice(job, run, case_id) for case_id in job.data.validation_ids()]
    net.train()
    return mean_dice(torch.cat(scores))[0]


def case_dice(job: StageJob, run: StageInference, case_id: str) -> torch.Tensor:
    """Dice per foreground class ``(1, K-1)`` of one val case, segmented into a uint8 label map on the CPU.

    Everything of the case is made and freed inside this call, so no case's input, output or logits is alive
    while the next one is read (they were, and the run's peak grew with the val split).
    """
    x, y = job.data.validation_pair(case_id, job.device)
    labels = run.labels(x)
    return dice_per_class(labels, y, job.num_classes)


def train_stage(job: StageJob, progress: bool = True, clock: Clock = time.perf_counter) -> StageOutcome:
    """Train one stage for ``job.train.steps`` steps or until its time share is spent (continuing from
    ``last.pt`` if present, with the time it had spent); ``clock`` reads the wall clock in seconds."""
    seed_everything(job.train.seed, job.seed_offset, job.train.deterministic)
    train, times = job.train, job.times
    net = build_network(job.in_channels, job.num_classes, job.model, train.checkpointing, train.channels_last)
    net = distributed.sync_norms(net.to(job.device), job.device)
    optimizer = build_optimizer(train.optimizer, net.parameters(), train.lr)
    scaler = grad_scaler(job.train.precision, job.device)
    step, state = resume_state(job, net, optimizer, scaler)  # every rank loads the same last.pt
    loss_fn = make_loss(job.stage, job.train, job.class_weights, job.model).to(job.device)
    precision = job.train.precision
    total = None if times.limit is not None else train.steps  # time-limited: a count, not a bar to --steps
    bar = tqdm(total=total, initial=step, desc=f"{job.variant}/{job.stage.name}",
               disable=not (progress and distributed.is_main()))  # fmt: skip
    elapsed, net = state["train_seconds"], net.train()
    started = clock() - elapsed
    trained = distributed.wrap(net, job.device)  # DDP under torchrun (gradients averaged over ranks), else net
    spent = step > 0 and times.out_of_time(elapsed)  # resumed after its time limit: nothing left to train
    with stage_log(job, step) as log:
        for x, y in () if spent else job.data.batches(step):
            lr = learning_rate(train.lr, train.lr_schedule, step, train.steps, times.spent(elapsed))
            set_learning_rate(optimizer, lr)
            loss = train_step(trained, optimizer, loss_fn, x.to(job.device), y.to(job.device), precision, scaler)
            step += 1
            if scaler is None:  # fp16's scaler skips the steps whose gradients overflow: its weights stay finite
                check_loss(job, loss, step, state)
            bar.update(1)
            elapsed = read_clock(clock, started, times)
            if log is not None:
                log.step(step, elapsed, loss, lr)
            marks, stop = times.due(elapsed, state["snapshots"]), times.out_of_time(elapsed)
            periodic = step % job.train.val_every == 0 or step == job.train.steps
            if periodic or marks or stop:
                state["train_seconds"] = elapsed
                state["snapshots"].update({mark: {"seconds": elapsed, "step": step} for mark in marks})
                paused = clock()
                validate_on_ranks(job, (net, optimizer, scaler), step, state, loss, marks, bar, log)
                if not (periodic or stop):
                    started += clock() - paused  # validated only for a snapshot: off the clock
            if stop:
                break
    bar.close()
    return StageOutcome(job.folder / "best.pt", state["best_score"], state["best_step"], step,
                        state["train_seconds"], state["history"], state["snapshots"])  # fmt: skip


def validate_on_ranks(job: StageJob, trained, step: int, state: Dict[str, Any], loss: torch.Tensor,
                      marks: Sequence[int], bar, log: Optional[StageLog] = None) -> None:  # fmt: skip
    """Average the loss and the CPU BatchNorm statistics over the ranks; rank 0 validates and writes
    (:func:`record_validation`) while the others wait. ``trained`` is ``(net, optimizer, scaler)``."""
    loss = distributed.mean_over_ranks(loss)
    distributed.average_buffers(trained[0])
    if distributed.is_main():
        record_validation(job, trained, step, state, loss.item(), marks, log)
        bar.set_postfix(loss=f"{loss.item():.3f}", val_dice=f"{dice_percent(state['history'][-1]['mean_dice'])} %")
    distributed.barrier()


def stage_log(job: StageJob, step: int) -> ContextManager[Optional[StageLog]]:
    """The stage's curves (:mod:`~medseg_mem.training.curves`), continued from ``step``; under torchrun only rank 0
    keeps them (the others get ``None``)."""
    if not distributed.is_main():
        return contextlib.nullcontext()
    names = job.meta.get("class_names", [])[1:] or [f"class_{i}" for i in range(1, job.num_classes)]
    return StageLog.open(job.folder, names, resumed_step=step)


def read_clock(clock: Clock, started: float, times: StageTimes) -> float:
    """Seconds since the stage started; under torchrun, when the clock decides anything, rank 0's reading, so
    every rank stops and validates at the same step."""
    elapsed = clock() - started
    return distributed.from_main(elapsed) if times.timed else elapsed


def record_validation(job: StageJob, trained, step: int, state: Dict[str, Any], loss: float,
                      marks: Sequence[int] = (), log: Optional[StageLog] = None) -> None:  # fmt: skip
    """Validate, write the steps so far to ``log`` (before the resume point, so a resumed stage never lacks one),
    keep the best checkpoint, copy it to the snapshot of each of ``marks`` (seconds) passed now, then write the
    resume point (all atomically).

    ``trained`` is ``(net, optimizer, scaler)``.
    """
    check_weights(job, trained[0], step, loss, state)  # never file NaN weights as best.pt or last.pt
    dice = validate(job, trained[0])
    mean = overall_dice(dice)
    state["history"].append({"step": step, "loss": loss, "dice": dice, "mean_dice": mean})
    if log is not None:
        log.validation(step, dice, mean)
    if improves(mean, state):
        state["best_score"], state["best_step"] = mean, step
        save_checkpoint(job.folder / "best.pt", payload(job, *trained, step, state))
    for mark in marks:
        save_checkpoint(snapshot_path(job.folder, mark), load_checkpoint(job.folder / "best.pt"))
    save_checkpoint(job.folder / "last.pt", payload(job, *trained, step, {**state, "torch_rng": torch.get_rng_state()}))
