"""What a trained variant is filed as: its test-split evaluation, its peak inference memory and its result rows.

:func:`evaluate_variant` segments each case with the whole variant (a
:class:`~medseg_mem.variants.trained.TrainedVariant`) and scores it (Dice per class,
:mod:`medseg_mem.inference.metrics`; seconds per case); :func:`evaluate_checkpoints` segments the test split one case
at a time with the stage checkpoints; :func:`measure_variant_memory` measures the whole variant's inference peak on
the largest test case (:func:`medseg_mem.memory.measure.measure_peak`, in a fresh process); :func:`result_rows` makes
one tidy row per foreground class for the results CSV (:mod:`medseg_mem.report.results`), the training's own peak
memory included.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from medseg_mem import __version__
from medseg_mem.core.config import InferenceConfig, ModelConfig, TrainConfig
from medseg_mem.core.inference_config import tta_text
from medseg_mem.data.cases import CaseStream, open_case
from medseg_mem.data.fingerprint import fingerprint
from medseg_mem.data.prepared import PreparedDataset
from medseg_mem.inference.metrics import dice_per_class, dice_text, mean_dice
from medseg_mem.memory.measure import MemoryReading, measure_peak
from medseg_mem.models.build import load_networks
from medseg_mem.report.results import utc_timestamp
from medseg_mem.runner.snapshots import Snapshot
from medseg_mem.variants import TrainedVariant, get_variant


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so the clock reads what the work took."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Evaluation:
    """Mean Dice per foreground class over the cases that score it (NaN: none), how many cases each mean averages
    (``dice_cases``), and mean inference seconds per case."""

    dice: List[float]
    seconds_per_case: float
    n_cases: int
    dice_cases: Optional[List[int]] = None


def timed(segment: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, device: torch.device):
    """Run ``segment`` on ``image`` and return (labels, seconds); the clock covers splitting and stitching."""
    synchronize(device)
    start = time.perf_counter()
    labels = segment(image)
    synchronize(device)
    return labels, time.perf_counter() - start


def scored(segment: Callable, case: Tuple[torch.Tensor, torch.Tensor], num_classes: int, device: torch.device):
    """``(Dice per foreground class (1, K-1), seconds)`` of one case; its image, label and label map are freed on
    return, so no case is alive while the next one is read and segmented."""
    image, label = case
    labels, elapsed = timed(segment, image, device)
    return dice_per_class(labels.cpu(), label, num_classes), elapsed


def evaluate_variant(run: TrainedVariant, cases: Sequence[Tuple[torch.Tensor, torch.Tensor]],
                     device: torch.device) -> Evaluation:  # fmt: skip
    """Segment each ``(image (1,C,X,Y,Z), label (1,1,X,Y,Z))`` case with the whole variant ``run`` (its networks
    put in evaluation mode; its inference settings set the slab batch, overlap and precision) and score it.

    The first case is run once untimed to warm up (allocator, kernels), then every case is timed.
    """
    run.eval()

    def segment(image):
        return run.segment(image.to(device))

    scores, seconds = [], []
    with torch.inference_mode():
        segment(cases[0][0])
        for index in range(len(cases)):
            score, elapsed = scored(segment, cases[index], run.num_classes, device)
            scores.append(score)
            seconds.append(elapsed)
    dice, counts = mean_dice(torch.cat(scores))
    return Evaluation(dice=dice, seconds_per_case=sum(seconds) / len(seconds), n_cases=len(cases), dice_cases=counts)


@dataclass(frozen=True)
class VariantResult:
    run_id: str
    variant: str
    evaluation: Evaluation
    memory: MemoryReading
    train_steps: int
    train_seconds: float
    budget_seconds: Optional[int] = None  # a snapshot's mark; None for the final model
    train_peak_bytes: Optional[int] = None  # training memory at its peak, the largest over the stages (and folds)
    train_process_peak_bytes: Optional[int] = None  # the whole process at that peak
    need: Optional[object] = None  # the planner's figures (runner.guard.Need) when the run was planned
    val_dice: Optional[float] = None  # the final stage's best validation mean Dice (its best.pt's score)
    init_from: Optional[str] = None  # the run whose weights training started from (run --init-from)


def memory_setup(variant_name: str, paths: Dict[str, str], image, model: ModelConfig, num_classes: int, device: str,
                 inference: InferenceConfig = InferenceConfig()):  # fmt: skip
    """Top-level (picklable) setup for :func:`measure_peak`: load the variant, return its inference call.

    The measuring process first does what a ``predict`` process does before its first inference
    (:func:`~medseg_mem.memory.calibration_run.warm_up`: plan, read a NIfTI through MONAI, load a checkpoint), so the
    whole process's peak it reports is the one ``predict`` would reach on this case."""
    from medseg_mem.memory.calibration_run import warm_up

    warm_up()
    torch_device = torch.device(device)
    nets = load_networks({k: Path(v) for k, v in paths.items()}, torch_device, inference.channels_last,
                         inference.precision)  # fmt: skip
    run = TrainedVariant(get_variant(variant_name), nets, model, num_classes, inference)
    image = torch.as_tensor(image).to(torch_device)

    def infer():
        with torch.inference_mode():
            return run.segment(image)

    return infer


def measure_variant_memory(name, paths, dataset: PreparedDataset, model, num_classes, device,
                           inference: InferenceConfig = None) -> MemoryReading:  # fmt: skip
    """Peak inference memory of the whole variant on the largest test case."""
    image = np.array(open_case(dataset, dataset.largest("test"))[0])[None]
    args = (name, {k: str(v) for k, v in paths.items()}, image, model, num_classes, device.type, inference)
    return measure_peak(memory_setup, args, device.type)


def valid_dice(score: Optional[float]) -> Optional[float]:
    """A validation Dice as the results CSV files it: rounded to 6 digits; ``None`` when missing or not finite."""
    if score is None or not np.isfinite(score):
        return None
    return round(min(max(float(score), 0.0), 1.0), 6)


def result_rows(result: VariantResult, dataset, model: ModelConfig, train: TrainConfig, device,
                inference: InferenceConfig = InferenceConfig()) -> List[dict]:  # fmt: skip
    """One tidy row per foreground class, run-level columns repeated."""
    slabs = result.variant != "full"
    run = {
        "run_id": result.run_id, "timestamp": utc_timestamp(), "dataset": dataset.name, "variant": result.variant,
        "dataset_fingerprint": fingerprint(dataset), "val_dice": valid_dice(result.val_dice),
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
        "train_peak_memory_bytes": result.train_peak_bytes,
        "stage2_guidance": stage2_guidance_text(train) if result.variant == "cascade" else "",
        "init_from": result.init_from or "",
        **process_columns(result),
    }  # fmt: skip
    names, counts = dataset.class_names[1:], result.evaluation.dice_cases
    return [
        {**run, "class_name": names[i], "class_index": i + 1, "dice": round(d, 6),
         "dice_cases": None if counts is None else counts[i]}
        for i, d in enumerate(result.evaluation.dice)
    ]  # fmt: skip


def process_columns(result: VariantResult) -> dict:
    """The whole-process columns of a run's rows: measured and planned, inference and training; and the planner's
    figure for the inference's ``peak_memory_bytes`` with its error (as benchmark rows file them)."""
    columns = {"process_peak_bytes": result.memory.process_bytes or None,
               "train_process_peak_bytes": result.train_process_peak_bytes or None}  # fmt: skip
    if result.need is None:
        return columns
    planned, measured = result.need.evaluation.predicted_bytes, result.memory.peak_bytes
    error = round((planned - measured) / measured, 4) if measured else None
    return {**columns, "planned_bytes": planned, "planner_error": error,
            "planned_process_bytes": result.need.evaluation.process_bytes,
            "train_planned_process_bytes": result.need.training.process_bytes}


def evaluate_checkpoints(name, paths, dataset, model, device, inference: InferenceConfig) -> Evaluation:
    """Segment the test split with variant ``name`` made of the stage checkpoints ``paths`` and score it."""
    nets = load_networks(paths, device, inference.channels_last, inference.precision)
    run = TrainedVariant(get_variant(name), nets, model, dataset.num_classes, inference)
    return evaluate_variant(run, CaseStream(dataset, "test"), device)


def evaluate_snapshot(final: VariantResult, snapshot: Snapshot, dataset, model, device, inference,
                      echo) -> VariantResult:  # fmt: skip
    """The variant as it was at a snapshot mark, evaluated like the final model; its memory is the final one's."""
    evaluation = evaluate_checkpoints(final.variant, snapshot.paths, dataset, model, device, inference)
    dice = dice_text(dataset.class_names[1:], evaluation.dice)
    echo(f"[{final.variant}] snapshot at {snapshot.mark / 60:g} min ({snapshot.steps} steps, "
         f"{snapshot.seconds / 60:.2f} min trained): test Dice {dice}")
    return VariantResult(final.run_id, final.variant, evaluation, final.memory, snapshot.steps, snapshot.seconds,
                         budget_seconds=snapshot.mark, train_peak_bytes=final.train_peak_bytes,
                         train_process_peak_bytes=final.train_process_peak_bytes, need=final.need)  # fmt: skip


def stage2_guidance_text(train: TrainConfig) -> str:
    """The CSV's ``stage2_guidance``: ``truth``, or ``predicted-2fold``."""
    if train.stage2_guidance == "predicted":
        return f"predicted-{train.guidance_folds}fold"
    return train.stage2_guidance
