"""Small frozen dataclasses that group the options of each command, validated once on construction.

They know nothing of files or click: the CLI builds them, library functions take them. ``prepare``'s options
(:mod:`medseg_mem.core.prepare_config`) and inference's (:mod:`medseg_mem.core.inference_config`) have modules of
their own.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from medseg_mem.core.changes import RunChanges
from medseg_mem.core.errors import OptionError, check_choice
from medseg_mem.core.record import Record
from medseg_mem.core.inference_config import InferenceConfig  # re-exported: RunRequest uses it, callers import it here
from medseg_mem.core.names import (
    AUGMENT_NAMES,
    CLASS_WEIGHT_NAMES,
    DEEP_SUPERVISION_LEVELS,
    DEFAULT_PREPARED,
    DEFAULT_RESULTS,
    DEFAULT_RUNS,
    DEVICE_NAMES,
    GUIDANCE_NAMES,
    LOSS_NAMES,
    LR_SCHEDULE_NAMES,
    MAX_STEPS,
    OPTIMIZER_NAMES,
    PRECISION_NAMES,
    STAGE2_GUIDANCE_NAMES,
)


WIDTHS_RULE = "must list at least two positive widths like 32,64,128,256,512"


def parse_widths(channels) -> Tuple[int, ...]:
    """U-Net widths from ``"8,16,32"``, ``[8, 16, 32]`` or ``(8, 16, 32)``: ``run``'s and the bundles'
    ``--channels``.

    Raises:
        OptionError: naming ``--channels``, the rule and the value, for fewer than two positive whole widths.

    Example:
        >>> parse_widths("8,16,32"), parse_widths([4, 8])
        ((8, 16, 32), (4, 8))
    """
    try:
        parts = channels.split(",") if isinstance(channels, str) else list(channels)
        widths = tuple(int(part) for part in parts)
    except (TypeError, ValueError):
        widths = ()
    if len(widths) < 2 or min(widths) < 1:
        raise OptionError("--channels", WIDTHS_RULE, channels)
    return widths


@dataclass(frozen=True)
class ModelConfig(Record):
    """Network and variant settings shared by training, evaluation, planning and prediction.

    Args:
        channels: width of each U-Net level (spec: 32, 64, 128, 256, 512); its length is the depth.
        slab_size: slab thickness along the last axis for ``patch`` and the cascade's stage 2 (spec: 16).
        downsample: stage-1 resampling factor of ``cascade`` (thesis: 0.3 brain, 0.2 liver).
        guidance: how stage 1's segmentation enters stage 2: ``"onehot"`` (one channel per foreground class, as
            nnU-Net; default, see docs/method.md for the measurement behind it) or ``"label"`` (one channel,
            class index / (K-1), as the thesis).
        deep_supervision: train with nnU-Net's deep supervision: a 1x1x1 head on each decoder level below the top
            one and a loss weighted 1, 1/2, 1/4, ... over the resolutions
            (:mod:`medseg_mem.models.deep_supervision`). It adds parameters, so checkpoints record it and
            inference rebuilds the same network (whose output is the plain network's: the heads are used only in
            training). Needs at least 3 levels.
    """

    channels: Tuple[int, ...] = (32, 64, 128, 256, 512)
    slab_size: int = 16
    downsample: float = 0.3
    guidance: str = "onehot"
    deep_supervision: bool = False

    def __post_init__(self) -> None:
        if len(self.channels) < 2 or min(self.channels) < 1:
            raise OptionError("--channels", WIDTHS_RULE, self.channels)
        if self.slab_size < 1:
            raise OptionError("--slab-size", "must be a positive number of voxels", self.slab_size)
        if not 0 < self.downsample < 1:
            raise OptionError("--downsample", "must lie strictly between 0 and 1", self.downsample)
        check_choice("--guidance", self.guidance, GUIDANCE_NAMES)
        if self.deep_supervision and len(self.channels) < DEEP_SUPERVISION_LEVELS:
            rule = (f"needs a U-Net of at least {DEEP_SUPERVISION_LEVELS} levels (a decoder level below the top one "
                    "to supervise), e.g. --channels 8,16,32")  # fmt: skip
            given = f"--channels {','.join(map(str, self.channels))} ({len(self.channels)} levels)"
            raise OptionError("--deep-supervision", rule, given)


@dataclass(frozen=True)
class TrainConfig(Record):
    """Training options of ``medseg-mem run`` (one set for every stage of every variant).

    Args:
        steps: optimisation steps per stage.
        batch_size: samples per step (volumes for whole-volume stages, slabs for slab stages).
        val_every: validate (per-class Dice on the val split) every this many steps; the best checkpoint is kept.
        lr: learning rate (Adam, thesis: 3e-4; SGD, nnU-Net: 1e-2: see
            :func:`medseg_mem.training.optimizer.default_lr`).
        lr_schedule: ``"constant"`` (thesis) or ``"poly"`` (nnU-Net: ``lr * (1 - step / steps) ** 0.9``).
        optimizer: ``"adam"`` (thesis) or ``"sgd"``: SGD with Nesterov momentum 0.99 and weight decay 3e-5
            (nnU-Net; :mod:`medseg_mem.training.optimizer`).
        loss: ``"dice_ce"`` (Dice + cross-entropy, nnU-Net; default) or ``"dice"`` (thesis).
        class_weights: ``"none"``, or ``"balanced"``: loss weights ``sqrt(max count / count)`` per class from
            the training split's labels (:mod:`medseg_mem.training.class_weights`), so a rare class cannot die.
        batch_dice: compute Dice over the whole batch instead of per sample (MONAI ``DiceLoss(batch=True)``).
        foreground_oversample: fraction of slab samples drawn among the slabs that hold foreground (nnU-Net:
            0.33; 1: every slab sample, what the thesis did for the liver; 0: any slab). Whole-volume stages
            have no crops: it does not apply to them.
        augment: ``"none"``, or ``"nnunet"``: nnU-Net's random rotation, scaling, noise, brightness, contrast,
            gamma and mirroring of every training sample (:mod:`medseg_mem.training.augment`).
        guidance_noise: chance per foreground class that the cascade's stage-2 training guidance gets a random
            morphological perturbation (nnU-Net's cascade; :mod:`medseg_mem.training.guidance_noise`); 0: none.
        stage2_guidance: what the cascade's stage 2 trains and validates on: ``"truth"`` (the ground truth
            downsampled to stage-1 resolution; thesis) or ``"predicted"`` (stage 1's predictions: out-of-fold on
            the train split, the final stage 1's on the val split; :mod:`medseg_mem.runner.out_of_fold`). The
            dataclass default is the thesis's; ``run``'s real-data profile (:mod:`medseg_mem.runner.settings`)
            uses ``"predicted"``, and ``"poly"`` for ``lr_schedule``: both paid on hippocampus.
        guidance_folds: folds of the out-of-fold stage-1 models with ``stage2_guidance="predicted"`` (>= 2).
        seed: seeds weights and sampling so a run is repeatable (same seed, same machine: identical weights).
        device: ``"auto"`` (cuda when available), ``"cpu"`` or ``"cuda"``.
        precision: ``"fp32"``, or autocast to ``"bf16"`` / ``"fp16"`` (fp16 with a gradient scaler).
        checkpointing: recompute each U-Net level's activations in the backward pass instead of storing them
            (activation checkpointing): less training memory for about a third more compute.
        channels_last: keep the network's weights and activations channels-last (``torch.channels_last_3d``)
            while training: less memory and faster on the CPU (:func:`~medseg_mem.models.build.channels_last_layout`).
        workers: DataLoader worker processes (0: load in the training process).
        cache_bytes: host memory for cached training inputs; cases beyond it are read from disk per sample.
        deterministic: also ask torch for deterministic algorithms (``torch.use_deterministic_algorithms``).
        time_limit: minutes of training wall clock per variant (validation included), or ``None`` (train
            ``steps``). Training stops at the first step that ends at or past it, or at ``steps``, whichever comes
            first; a variant of several stages shares it (:mod:`medseg_mem.training.wallclock`). ``poly`` then
            decays over the larger of the step fraction and the fraction of the time spent.
        snapshots: training-time marks in minutes (each below ``time_limit`` when one is given): when training
            passes one, the best checkpoint so far is kept as ``snap-<seconds>s.pt`` and evaluated at the end.
    """

    steps: int = 300
    batch_size: int = 2
    val_every: int = 50
    lr: float = 3e-4
    lr_schedule: str = "constant"
    optimizer: str = "adam"
    loss: str = "dice_ce"
    batch_dice: bool = True
    class_weights: str = "none"
    foreground_oversample: float = 0.0
    augment: str = "none"
    guidance_noise: float = 0.0
    stage2_guidance: str = "truth"
    guidance_folds: int = 2
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    checkpointing: bool = False
    channels_last: bool = True
    workers: int = 0
    cache_bytes: int = 2**30
    deterministic: bool = False
    time_limit: Optional[float] = None
    snapshots: Tuple[float, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "snapshots", check_wall_clock(self.time_limit, self.snapshots))  # run.json: a list
        check_choice("--precision", self.precision, PRECISION_NAMES)
        if isinstance(self.workers, bool) or int(self.workers) < 0:
            raise OptionError("--workers", "must be a whole number >= 0 (0 loads in the training process)",
                              self.workers)
        if isinstance(self.cache_bytes, bool) or int(self.cache_bytes) < 0:
            raise OptionError("--cache", "must be a size >= 0 like 4GB or 512MiB", self.cache_bytes)
        counts = (("--steps", self.steps), ("--batch-size", self.batch_size), ("--val-every", self.val_every))
        for option, value in counts:
            if int(value) < 1:
                raise OptionError(option, "must be a positive whole number", value)
        if int(self.steps) > MAX_STEPS:
            raise OptionError("--steps", f"must be at most {MAX_STEPS:,} (a billion steps per stage)", self.steps)
        if not (isinstance(self.lr, numbers.Real) and math.isfinite(self.lr) and self.lr > 0):
            raise OptionError("--lr", "must be a positive, finite number", self.lr)
        check_choice("--lr-schedule", self.lr_schedule, LR_SCHEDULE_NAMES)
        check_choice("--loss", self.loss, LOSS_NAMES)
        check_choice("--class-weights", self.class_weights, CLASS_WEIGHT_NAMES)
        check_choice("--device", self.device, DEVICE_NAMES)
        if self.seed < 0:
            raise OptionError("--seed", "must be >= 0", self.seed)
        if not 0 <= self.guidance_noise <= 1:
            raise OptionError("--guidance-noise", "must be a probability in [0, 1]", self.guidance_noise)
        self._check_recipe()

    @classmethod
    def older(cls, data: Dict[str, Any]) -> Dict[str, Any]:
        """The settings of a record (``run.json``'s ``train``), with those of runs recorded before an option existed.

        Runs recorded before ``channels_last`` trained with contiguous weights, and resume so. Runs recorded before
        ``foreground_oversample`` saved ``skip_empty_slabs``: true is an oversampling of 1 (every slab sample holds
        foreground), false of 0 (any slab); both draw exactly the slabs they drew before.
        """
        data = {"channels_last": False, **data}
        if "skip_empty_slabs" in data:
            skip = data.pop("skip_empty_slabs")
            data.setdefault("foreground_oversample", 1.0 if skip else 0.0)
        return data

    def _check_recipe(self) -> None:
        """Validate the options of nnU-Net's training recipe: optimizer, augmentation, foreground oversampling."""
        check_choice("--optimizer", self.optimizer, OPTIMIZER_NAMES)
        check_choice("--augment", self.augment, AUGMENT_NAMES)
        fraction = self.foreground_oversample
        if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 <= fraction <= 1:
            raise OptionError("--foreground-oversample", "must be a fraction of the slab samples in [0, 1]", fraction)
        self._check_stage2_guidance()

    def _check_stage2_guidance(self) -> None:
        """Validate ``stage2_guidance`` and ``guidance_folds``."""
        check_choice("--stage2-guidance", self.stage2_guidance, STAGE2_GUIDANCE_NAMES)
        folds = self.guidance_folds
        if isinstance(folds, bool) or not isinstance(folds, numbers.Integral) or folds < 2:
            raise OptionError("--guidance-folds", "must be a whole number >= 2 (each fold holds out part of the "
                                                  "train split)", folds)  # fmt: skip


def check_minutes(option: str, value) -> float:
    """``value`` as a positive, finite number of minutes that is at least one second.

    Raises:
        OptionError: naming ``option``, the rule and the value.
    """
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (number and math.isfinite(value) and value * 60 >= 1):
        raise OptionError(option, "must be a positive number of minutes (at least 1 second, e.g. 0.5 or 15)", value)
    return float(value)


def check_wall_clock(time_limit, snapshots) -> Tuple[float, ...]:
    """Check ``--time-limit`` and ``--snapshots`` together; return the snapshot marks sorted.

    Marks are kept to the whole second (``snap-<seconds>s.pt``), so two marks may not round to the same second,
    and each must lie below ``time_limit`` (a mark at the limit is the final model itself).

    Raises:
        OptionError: naming the option, the rule and the value.
    """
    if time_limit is not None:
        check_minutes("--time-limit", time_limit)
    marks = sorted(check_minutes("--snapshots", mark) for mark in snapshots)
    seconds = [round(mark * 60) for mark in marks]
    if len(set(seconds)) < len(seconds):
        raise OptionError("--snapshots", "must list distinct marks (whole seconds apart)", tuple(snapshots))
    if time_limit is not None and marks and marks[-1] >= time_limit:
        rule = f"must each lie below --time-limit {time_limit:g} (the final model stands for the limit itself)"
        raise OptionError("--snapshots", rule, marks[-1])
    return tuple(marks)


@dataclass(frozen=True)
class RunRequest:
    """What ``medseg-mem run`` was asked to do.

    Args:
        variants: variant names, or ``("all",)``.
        data_dir: a prepared dataset (``medseg-mem prepare``'s output).
        results: the results CSV rows are appended to.
        runs_dir: checkpoints go to ``runs_dir/<run id>/<stage>/{best,last}.pt``.
        resume: a run id under ``runs_dir`` to continue from its last checkpoints (its saved settings are used).
        changes: the settings the user gave, laid over the dataset's default profile
            (:class:`~medseg_mem.core.changes.RunChanges`; see :mod:`medseg_mem.runner.settings`).
        progress: show progress bars.
        inference: how the test split is segmented (:class:`InferenceConfig`; its precision is replaced by
            ``inference_precision``).
        inference_precision: the evaluation's precision; ``None``: the training precision of the run.
        budget_bytes: memory every run must fit in (``variants=("auto",)`` picks the variant that does); ``None``:
            the device's free memory less a margin.
        memory_check: stop before any training when a run's planned peak exceeds the budget (``False``:
            ``--no-memory-check``, say so and train anyway).
        init_from: a trained run (id under ``runs_dir``, or its folder) whose best weights each stage starts from
            (:mod:`medseg_mem.runner.init_from`); ``None``: random weights.
    """

    variants: Tuple[str, ...] = ("all",)
    data_dir: Path = DEFAULT_PREPARED
    results: Path = DEFAULT_RESULTS
    runs_dir: Path = DEFAULT_RUNS
    resume: Optional[str] = None
    changes: RunChanges = RunChanges()
    progress: bool = True
    inference: InferenceConfig = InferenceConfig()
    inference_precision: Optional[str] = None
    budget_bytes: Optional[int] = None
    memory_check: bool = True
    init_from: Optional[str] = None

    def __post_init__(self) -> None:
        if self.inference_precision is not None:
            check_choice("--inference-precision", self.inference_precision, PRECISION_NAMES)

    def evaluation(self, train: TrainConfig) -> InferenceConfig:
        """How the test split is segmented: :attr:`inference` at :attr:`inference_precision` (else the run's
        training precision), in the run's training layout."""
        precision = self.inference_precision or train.precision
        return replace(self.inference, precision=precision, channels_last=train.channels_last)
