"""One training loop for any stage: sampling, loss, step budget, validation, best/last checkpoints, resume.

The loop never asks which variant it serves: a :class:`StageJob` says what to train and on which pairs.
The best checkpoint (highest mean validation Dice over the foreground classes) is what evaluation uses;
``last.pt`` is the resume point, written after every validation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
from monai.losses import DiceCELoss, DiceLoss
from tqdm.auto import tqdm

from medseg_mem.checkpoint import load_checkpoint, save_checkpoint
from medseg_mem.config import ModelConfig, TrainConfig
from medseg_mem.evaluate import dice_per_class
from medseg_mem.models.unet import UNet3D
from medseg_mem.samples import Pair, draw_batch
from medseg_mem.variants.base import Stage


@dataclass
class StageJob:
    """Everything needed to train one stage. ``meta`` is stored in checkpoints (classes, preprocessing …)."""

    variant: str
    stage: Stage
    in_channels: int
    num_classes: int
    model: ModelConfig
    train: TrainConfig
    train_pairs: Sequence[Pair]
    val_pairs: Sequence[Pair]
    folder: Path
    device: torch.device
    meta: Dict[str, Any] = field(default_factory=dict)
    seed_offset: int = 0


@dataclass(frozen=True)
class StageOutcome:
    best_path: Path
    best_score: float
    best_step: int
    steps: int
    seconds: float
    history: List[Dict[str, Any]]


def build_network(in_channels: int, num_classes: int, model: ModelConfig) -> UNet3D:
    return UNet3D(in_channels, num_classes, channels=model.channels)


def make_loss(stage: Stage, train: TrainConfig) -> torch.nn.Module:
    """Dice (thesis) or Dice + cross-entropy (nnU-Net), on softmax outputs, background per the stage."""
    options = dict(include_background=stage.include_background, to_onehot_y=True, softmax=True, batch=train.batch_dice)
    return DiceCELoss(**options) if train.loss == "dice_ce" else DiceLoss(**options)


def validate(job: StageJob, net: torch.nn.Module) -> List[float]:
    """Mean Dice per foreground class of this stage's own output on the validation pairs."""
    net.eval()
    scores = []
    with torch.inference_mode():
        for x, y in job.val_pairs:
            logits = job.stage.forward(net, x[None].to(job.device), job.model)
            scores.append(dice_per_class(logits.argmax(dim=1, keepdim=True).cpu(), y[None], job.num_classes))
    net.train()
    return torch.cat(scores).mean(dim=0).tolist()


def payload(job: StageJob, net, optimizer, step: int, state: Dict[str, Any]) -> Dict[str, Any]:
    """What a checkpoint holds: weights, optimizer, progress, random state and the settings to rebuild it."""
    return {
        "variant": job.variant,
        "stage": job.stage.name,
        "step": step,
        "state_dict": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "model": {
            "channels": list(job.model.channels),
            "slab_size": job.model.slab_size,
            "downsample": job.model.downsample,
            "guidance": job.model.guidance,
            "in_channels": job.in_channels,
            "num_classes": job.num_classes,
        },
        "meta": job.meta,
        **state,
    }


def resume_state(job: StageJob, net, optimizer) -> Tuple[int, Dict[str, Any], np.random.Generator]:
    """Start fresh, or continue from ``last.pt`` in the stage folder (weights, optimizer, step, RNG, history)."""
    rng = np.random.default_rng([job.train.seed, job.seed_offset])
    torch.manual_seed(job.train.seed * 1000 + job.seed_offset)
    last = job.folder / "last.pt"
    if not last.exists():
        return 0, {"best_score": -1.0, "best_step": 0, "history": [], "train_seconds": 0.0}, rng
    saved = load_checkpoint(last)
    net.load_state_dict(saved["state_dict"])
    optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["torch_rng"])
    rng.bit_generator.state = saved["numpy_rng"]
    keep = ("best_score", "best_step", "history", "train_seconds")
    return int(saved["step"]), {k: saved[k] for k in keep}, rng


def train_stage(job: StageJob, progress: bool = True) -> StageOutcome:
    """Train one stage for ``job.train.steps`` steps (continuing from ``last.pt`` if present)."""
    net = build_network(job.in_channels, job.num_classes, job.model).to(job.device)
    optimizer = torch.optim.Adam(net.parameters(), lr=job.train.lr)
    step, state, rng = resume_state(job, net, optimizer)
    loss_fn, slab = make_loss(job.stage, job.train), (job.model.slab_size if job.stage.slab else None)
    bar = tqdm(total=job.train.steps, initial=step, desc=f"{job.variant}/{job.stage.name}", disable=not progress)
    started, net = time.perf_counter() - state["train_seconds"], net.train()
    while step < job.train.steps:
        x, y = draw_batch(job.train_pairs, job.train.batch_size, slab, job.train.skip_empty_slabs, rng)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(net(x.to(job.device)), y.to(job.device))
        loss.backward()
        optimizer.step()
        step += 1
        bar.update(1)
        if step % job.train.val_every == 0 or step == job.train.steps:
            state["train_seconds"] = time.perf_counter() - started
            record_validation(job, net, optimizer, step, state, loss.item(), rng)
            bar.set_postfix(loss=f"{loss.item():.3f}", val_dice=f"{state['history'][-1]['mean_dice']:.3f}")
    bar.close()
    return StageOutcome(
        job.folder / "best.pt", state["best_score"], state["best_step"], step, state["train_seconds"], state["history"]
    )


def record_validation(
    job: StageJob, net, optimizer, step: int, state: Dict[str, Any], loss: float, rng: np.random.Generator
) -> None:
    """Validate, keep the best checkpoint, then write the resume point (both atomically)."""
    dice = validate(job, net)
    mean = float(np.mean(dice))
    state["history"].append({"step": step, "loss": loss, "dice": dice, "mean_dice": mean})
    if mean > state["best_score"]:
        state["best_score"], state["best_step"] = mean, step
        save_checkpoint(job.folder / "best.pt", payload(job, net, optimizer, step, state))
    random_state = {"torch_rng": torch.get_rng_state(), "numpy_rng": rng.bit_generator.state}
    save_checkpoint(job.folder / "last.pt", payload(job, net, optimizer, step, {**state, **random_state}))
