"""``medseg-mem run --variant auto``: train the most accurate variant whose training step and inference fit.

Each variant's need is the larger of its planned training step (the run's precision, checkpointing, layout,
batch size, loader workers and cache - at most the training split's size) and its planned inference (the
evaluation's settings), both for the dataset's largest case, on the run's device;
:func:`~medseg_mem.memory.choose.choose` then takes the first of the accuracy order
(:func:`~medseg_mem.memory.choose.accuracy_order`) that fits. Calibrations are read from
``medseg-work/planner-calibration.json`` and measured once when missing (said before it starts).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from medseg_mem.config import ModelConfig, TrainConfig
from medseg_mem.memory.budget import default_budget
from medseg_mem.memory.calibration import CALIBRATION_FILE, cached_calibration
from medseg_mem.memory.choose import accuracy_order, choose
from medseg_mem.memory.planner import plan_variant
from medseg_mem.memory.units import format_bytes
from medseg_mem.names import VARIANT_NAMES


def auto_variant(request, dataset, model: ModelConfig, train: TrainConfig, device: str, echo: Callable) -> str:
    """The variant ``--variant auto`` trains, said in one line with the reason.

    Raises:
        MedsegError: no variant fits the budget (names the smallest need and the lever that would fit it).
    """
    budget, source = (request.budget_bytes, "--budget") if request.budget_bytes else default_budget(device)
    shape = dataset.largest_image_shape()
    inference = request.evaluation(train)
    train = dataclasses.replace(train, cache_bytes=min(int(train.cache_bytes), training_bytes(dataset)))
    needs = {name: need(name, shape, dataset.num_classes, model, train, inference, device, echo)
             for name in VARIANT_NAMES}  # fmt: skip
    order, why = accuracy_order(request.results, dataset.name)
    lever = _lever(shape, dataset.num_classes, model, train, inference, device, echo, budget)
    choice = choose(needs, order, budget, source, why, lever)
    echo(f"--variant auto: {choice.reason}")
    return choice.variant


def training_bytes(dataset) -> int:
    """Bytes the loader's cache could ever hold: the training cases' float32 images and uint8 labels."""
    voxels = sum(s[0] * s[1] * s[2] for s in map(dataset.shape, dataset.ids("train")))
    return voxels * (4 * dataset.in_channels + 1)


def need(name, shape, classes, model, train, inference, device, echo) -> int:
    """Planned peak of ``name``: the larger of one training step and the inference.

    Under torchrun the training step is one rank's (DDP's buckets included), times the number of processes on
    a CPU, whose RAM they share.
    """
    from medseg_mem.training import distributed

    nproc = distributed.world_size()
    training = plan_variant(
        name, shape, classes, model, batch=train.batch_size, mode="training", device=device,
        calibration=_calibration(model, device, echo, "training", train.precision, train.checkpointing,
                                 train.channels_last),
        precision=train.precision, checkpointing=train.checkpointing, workers=train.workers,
        cache_bytes=int(train.cache_bytes), channels_last=train.channels_last, nproc=nproc,
        optimizer=train.optimizer,
    )  # fmt: skip
    calibration = _calibration(model, device, echo, "inference", inference.precision, False, inference.channels_last)
    infer = plan_variant(name, shape, classes, model, calibration=calibration, device=device, inference=inference)
    shared = nproc if device == "cpu" else 1
    return max(shared * training.predicted_bytes, infer.predicted_bytes)


def _calibration(model, device, echo, mode, precision, checkpointing, channels_last):
    """The cached calibration for these settings, measured once (and said) when missing."""
    return cached_calibration(CALIBRATION_FILE, model.channels, device, True, echo, mode=mode, precision=precision,
                              checkpointing=checkpointing, channels_last=channels_last)  # fmt: skip


def _lever(shape, classes, model, train, inference, device, echo, budget) -> Callable[[str], str]:
    """For the error when nothing fits: what bf16 + checkpointing would need for the smallest variant."""

    def hint(name: str) -> str:
        if train.precision == "bf16" and train.checkpointing and inference.precision == "bf16":
            return "lower --batch-size, --channels or --slab-size, or give more memory"
        lean = dataclasses.replace(train, precision="bf16", checkpointing=True)
        cheaper = need(name, shape, classes, model, lean, dataclasses.replace(inference, precision="bf16"), device,
                       echo)  # fmt: skip
        verdict = "fits" if cheaper <= budget else "still does not fit; also lower --batch-size, --cache or --channels"
        return (f"with --precision bf16 --checkpointing it would need {format_bytes(cheaper)}, which {verdict}")

    return hint

