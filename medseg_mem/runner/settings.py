"""Which settings a run uses: the dataset's default profile, the user's changes, and the saved run record.

Profiles: the embedded default (``SyntheticRods``, 32x32x96 volumes) trains narrow U-Nets (8..128 channels) with
Adam at 3e-3 so ``run --variant all`` finishes in minutes on a 2-core CPU (at the thesis's 3e-4 the narrow nets'
cross-entropy was still at 0.78 after 120 steps; at 3e-3 it was at 0.02 after 150), 200 steps (in 300-step runs
with class weights, seeds 0-2, validation Dice at step 200 was already >= 0.95 for ``full`` and >= 0.93 for each
cascade stage, and 300 steps took the README's main command to 5.7 minutes), validation every 50, and
``balanced`` class weights: without them the rare short rod (0.8 % of the voxels) "died" on some seeds (``full``
seed 0: validation Dice 0.0 from step 100 to 300, also at lr 1e-3 after step 150, with polynomial decay
and without batch Dice; the cascade's stage 2 seed 3 likewise), with them the same ``full`` run reached 1.0 / 1.0
by step 150 (see :mod:`medseg_mem.training.class_weights`).
Every other dataset gets the spec widths (32..512), the thesis's learning rate 3e-4 and no class weights.
Both profiles train with Adam; ``--optimizer sgd`` without ``--lr`` trains at nnU-Net's 1e-2 instead of the
profile's rate (:func:`~medseg_mem.training.optimizer.default_lr`).
Both default to Dice + cross-entropy with batch Dice: plain Dice let one hippocampus class collapse to ~0.05
Dice in early experiments, while cross-entropy gives every voxel a gradient from the first step.
Real data also gets what paid in the hippocampus measurements (docs/results.md): the polynomial learning-rate
decay (nnU-Net's ``poly``: 88.0 mean test Dice against 87.2 at a constant rate in 5 minutes), and the cascade's
stage 2 trained on stage 1's out-of-fold predictions (``stage2_guidance="predicted"``, 2 folds: 87.0 against 85.6
with ground-truth guidance in 15 minutes). The rest of nnU-Net's recipe did not pay there and stays off. The
embedded default keeps the thesis's constant rate and ground-truth guidance: on it, over seeds 0-4, ``poly``
lowered the cascade from 97.8-99.0 to 89.5-97.5 mean test Dice, and ``poly`` with predicted guidance to
43.9-94.5 (below ``patch`` on seed 3, its short rod lost).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, NamedTuple, Tuple

from medseg_mem.core.files.atomic import write_json_atomic
from medseg_mem.core.changes import RunChanges
from medseg_mem.core.config import ModelConfig, RunRequest, TrainConfig
from medseg_mem.core.errors import MedsegError, OptionError
from medseg_mem.core.names import EMBEDDED_DATASET
from medseg_mem.training.optimizer import default_lr

EMBEDDED_MODEL = ModelConfig(channels=(8, 16, 32, 64, 128))
EMBEDDED_TRAIN = TrainConfig(steps=200, batch_size=2, val_every=50, lr=3e-3, class_weights="balanced")
REAL_MODEL = ModelConfig()
REAL_TRAIN = TrainConfig(steps=300, batch_size=2, val_every=50, lr_schedule="poly", stage2_guidance="predicted")


class RunJob(NamedTuple):
    """One run to train: its id, its variant and the settings it trains with."""

    run_id: str
    variant: str
    train: TrainConfig
    model: ModelConfig


MODEL_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}
TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def profile(dataset_name: str) -> Tuple[ModelConfig, TrainConfig]:
    """Default model and training settings for a dataset."""
    if dataset_name == EMBEDDED_DATASET:
        return EMBEDDED_MODEL, EMBEDDED_TRAIN
    return REAL_MODEL, REAL_TRAIN


def resolve_settings(request: RunRequest, dataset) -> Tuple[ModelConfig, TrainConfig]:
    """The dataset's profile with the user's changes applied (validated by the dataclasses)."""
    return with_changes(*profile(dataset.name), request.changes)


def with_changes(model: ModelConfig, train: TrainConfig, changes: RunChanges) -> Tuple[ModelConfig, TrainConfig]:
    """``model`` and ``train`` with the settings the user changed (``run``'s options, and ``plan``'s, which plans
    what ``run`` would train); a learning rate follows the optimizer unless given."""
    model, train = changes.apply(model, train)
    if changes.train.lr is None:
        train = dataclasses.replace(train, lr=default_lr(train.optimizer, train.lr))
    return model, train


def write_run_record(run_dir: Path, info: Dict[str, Any], model: ModelConfig, train: TrainConfig) -> Path:
    """``run.json``: what the run is, so ``--resume`` continues it with the very same settings."""
    record = {**info, "model": model.to_dict(), "train": train.to_dict()}
    return write_json_atomic(Path(run_dir) / "run.json", record)


def load_run_record(run_dir: Path) -> Dict[str, Any]:
    """Read ``run.json`` back into configs; a missing or damaged record names the folder and the fix."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise MedsegError(f"--resume: no run at {run_dir} (no run.json); list {Path(run_dir).parent} for run ids")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        record["model"] = ModelConfig.from_dict(record["model"], strict=True)
        record["train"] = TrainConfig.from_dict(record["train"], strict=True)
    except (ValueError, KeyError, TypeError) as error:
        raise MedsegError(f"{path}: not a readable run record ({error}); start a new run instead") from error
    except OptionError as error:
        raise MedsegError(f"{path}: {recorded_setting(error)} (was run.json edited?); restore its value or start a "
                          "new run") from error  # fmt: skip
    return record


def recorded_setting(error: OptionError) -> str:
    """``error``'s rule and value, told of the run.json key (``model.slab_size``) instead of the option
    (``--slab-size``), which the user did not pass."""
    field = error.option.lstrip("-").replace("-", "_")
    section = "model" if field in MODEL_FIELDS else "train" if field in TRAIN_FIELDS else None
    return str(error).replace(error.option, f"{section}.{field}", 1) if section else str(error)
