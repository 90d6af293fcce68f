"""What a training checkpoint holds, and how a stage resumes from its ``last.pt``."""

from __future__ import annotations

from typing import Any, Dict, Tuple

import torch

from medseg_mem.core.files.checkpoint import load_checkpoint
from medseg_mem.core.errors import MedsegError


#: The training settings a checkpoint describes itself with (``class_weights``: the weights, not their rule).
TRAINING_KEYS = ("seed", "precision", "checkpointing", "channels_last", "batch_size", "lr", "lr_schedule", "optimizer",
                 "augment", "foreground_oversample", "loss", "guidance_noise", "time_limit", "snapshots")

KEPT = ("best_score", "best_step", "history", "train_seconds", "snapshots")


def fresh_state() -> Dict[str, Any]:
    """The progress of a stage that has not trained yet (a new dict each call: the loop appends to it).

    ``snapshots`` maps each mark passed (seconds) to the stage's ``{"seconds", "step"}`` when it was taken.
    """
    return {"best_score": -1.0, "best_step": 0, "history": [], "train_seconds": 0.0, "snapshots": {}}


def payload(job, net, optimizer, scaler, step: int, state: Dict[str, Any]) -> Dict[str, Any]:
    """Weights, optimizer (and fp16 scaler) state, progress, and the settings to rebuild and describe the net."""
    return {
        "variant": job.variant,
        "stage": job.stage.name,
        "step": step,
        "state_dict": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "model": {**job.model.to_dict(), "in_channels": job.in_channels, "num_classes": job.num_classes},
        "training": {**{key: value for key, value in job.train.to_dict().items() if key in TRAINING_KEYS},
                     "class_weights": None if job.class_weights is None else list(job.class_weights),
                     "stage_time_limit_seconds": job.times.limit},  # fmt: skip
        "meta": job.meta,
        **state,
    }


def resume_state(job, net, optimizer, scaler) -> Tuple[int, Dict[str, Any]]:
    """Start fresh (step 0; from ``job.init_weights``' weights when given), or continue from ``last.pt`` in the stage
    folder: weights, optimizer, scaler, step and history. Sampling needs no saved state: sample ``i`` depends only
    on the seed and ``i``."""
    last = job.folder / "last.pt"
    if not last.exists():
        if job.init_weights is not None:
            net.load_state_dict(load_checkpoint(job.init_weights)["state_dict"])
        return 0, fresh_state()
    saved = load_checkpoint(last)
    check_recorded_model(job, saved, last)
    net.load_state_dict(saved["state_dict"])
    optimizer.load_state_dict(saved["optimizer"])
    if scaler is not None and saved.get("scaler"):
        scaler.load_state_dict(saved["scaler"])
    torch.set_rng_state(saved["torch_rng"])
    return int(saved["step"]), {**fresh_state(), **{key: saved[key] for key in KEPT if key in saved}}


def check_recorded_model(job, saved: Dict[str, Any], last) -> None:
    """``run.json``'s model settings (``job.model``, every field) are those ``last.pt`` was trained with.

    Raises:
        MedsegError: naming ``run.json``, the setting, both values and the fix.
    """
    spec = saved.get("model", {})
    for key, recorded in job.model.to_dict().items():
        if key in spec and spec[key] != recorded:
            raise MedsegError(f"{job.folder.parent / 'run.json'}: model.{key} is {recorded} but {last} was trained "
                              f"with {spec[key]} (was run.json edited?); restore model.{key} to {spec[key]} or start "
                              "a new run")  # fmt: skip
