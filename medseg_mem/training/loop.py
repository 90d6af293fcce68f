"""One training loop for any stage: streamed batches, precision, validation, best/last checkpoints, resume.

The loop never asks which variant it serves: a :class:`StageJob` says what to train and where its data comes
from (:class:`~medseg_mem.training.sampling.StageData`). The best checkpoint (highest mean validation Dice over
the foreground classes) is what evaluation uses; ``last.pt`` is the resume point, written after every validation.
Everything random is seeded from the run's seed before the network is built, so the same seed on the same
machine gives the same weights bit for bit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from monai.losses import DiceCELoss, DiceLoss
from tqdm.auto import tqdm

from medseg_mem.checkpoint import save_checkpoint
from medseg_mem.config import ModelConfig, TrainConfig
from medseg_mem.evaluate import dice_per_class
from medseg_mem.models.build import build_network
from medseg_mem.training import distributed
from medseg_mem.training.checkpoints import payload, resume_state
from medseg_mem.training.optimizer import build_optimizer
from medseg_mem.training.precision import grad_scaler
from medseg_mem.training.seeding import seed_everything
from medseg_mem.training.step import learning_rate, set_learning_rate, train_step
from medseg_mem.variants.base import Stage


@dataclass
class StageJob:
    """Everything needed to train one stage. ``meta`` is stored in checkpoints (classes, preprocessing …).

    ``data`` provides ``batches(first_step)`` (training batches from that step on) and ``validation()``
    (whole-volume val pairs), e.g. a :class:`~medseg_mem.training.sampling.StageData`.
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


@dataclass(frozen=True)
class StageOutcome:
    best_path: Path
    best_score: float
    best_step: int
    steps: int
    seconds: float
    history: List[Dict[str, Any]]


def make_loss(stage: Stage, train: TrainConfig, weights: Optional[Tuple[float, ...]] = None) -> torch.nn.Module:
    """Dice (thesis) or Dice + cross-entropy (nnU-Net), on softmax outputs, background per the stage, with
    optional class ``weights`` (one per class, background included)."""
    options = dict(include_background=stage.include_background, to_onehot_y=True, softmax=True, batch=train.batch_dice)
    weight = None if weights is None else torch.tensor(weights, dtype=torch.float32)
    if train.loss == "dice_ce":
        return DiceCELoss(weight=weight, **options)
    if weight is not None and not stage.include_background:
        weight = weight[1:]
    return DiceLoss(weight=weight, **options)


def validate(job: StageJob, net: torch.nn.Module) -> List[float]:
    """Mean Dice per foreground class of this stage's own output on the validation cases (one at a time)."""
    net.eval()
    scores = []
    with torch.inference_mode():
        for x, y in job.data.validation():
            logits = job.stage.forward(net, x.to(job.device), job.model)
            scores.append(dice_per_class(logits.argmax(dim=1, keepdim=True).cpu(), y, job.num_classes))
    net.train()
    return torch.cat(scores).mean(dim=0).tolist()


def train_stage(job: StageJob, progress: bool = True) -> StageOutcome:
    """Train one stage for ``job.train.steps`` steps (continuing from ``last.pt`` if present)."""
    seed_everything(job.train.seed, job.seed_offset, job.train.deterministic)
    train = job.train
    net = build_network(job.in_channels, job.num_classes, job.model, train.checkpointing, train.channels_last)
    net = distributed.sync_norms(net.to(job.device), job.device)
    optimizer = build_optimizer(train.optimizer, net.parameters(), train.lr)
    scaler = grad_scaler(job.train.precision, job.device)
    step, state = resume_state(job, net, optimizer, scaler)  # every rank loads the same last.pt
    loss_fn, precision = make_loss(job.stage, job.train, job.class_weights).to(job.device), job.train.precision
    main = distributed.is_main()
    bar = tqdm(total=job.train.steps, initial=step, desc=f"{job.variant}/{job.stage.name}",
               disable=not (progress and main))  # fmt: skip
    started, net = time.perf_counter() - state["train_seconds"], net.train()
    trained = distributed.wrap(net, job.device)  # DDP under torchrun (gradients averaged over ranks), else net
    for x, y in job.data.batches(step):
        set_learning_rate(optimizer, learning_rate(job.train.lr, job.train.lr_schedule, step, job.train.steps))
        loss = train_step(trained, optimizer, loss_fn, x.to(job.device), y.to(job.device), precision, scaler)
        step += 1
        bar.update(1)
        if step % job.train.val_every == 0 or step == job.train.steps:
            state["train_seconds"] = time.perf_counter() - started
            loss = distributed.mean_over_ranks(loss)
            distributed.average_buffers(net)
            if main:  # rank 0 validates and writes; the others wait for it
                record_validation(job, (net, optimizer, scaler), step, state, loss.item())
                bar.set_postfix(loss=f"{loss.item():.3f}", val_dice=f"{state['history'][-1]['mean_dice']:.3f}")
            distributed.barrier()
    bar.close()
    return StageOutcome(
        job.folder / "best.pt", state["best_score"], state["best_step"], step, state["train_seconds"], state["history"]
    )


def record_validation(job: StageJob, trained, step: int, state: Dict[str, Any], loss: float) -> None:
    """Validate, keep the best checkpoint, then write the resume point (both atomically).

    ``trained`` is ``(net, optimizer, scaler)``.
    """
    dice = validate(job, trained[0])
    mean = float(np.mean(dice))
    state["history"].append({"step": step, "loss": loss, "dice": dice, "mean_dice": mean})
    if mean > state["best_score"]:
        state["best_score"], state["best_step"] = mean, step
        save_checkpoint(job.folder / "best.pt", payload(job, *trained, step, state))
    save_checkpoint(job.folder / "last.pt", payload(job, *trained, step, {**state, "torch_rng": torch.get_rng_state()}))
