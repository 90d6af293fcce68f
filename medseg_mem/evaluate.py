"""Per-class Dice on reconstructed full volumes, and inference time per case.

Dice is counted on the label maps themselves (one class at a time), never on one-hot float volumes.
Scoring of an absent class (nnU-Net's rule; MONAI ``DiceMetric(ignore_empty=True)`` for an empty ground truth):
a class absent from both the ground truth and the prediction of a case has no Dice there (NaN) and is left out
of the means (:func:`mean_dice`), so a case without the class cannot score it 100 %; a class predicted where the
ground truth has none scores 0.0. Each class's mean says over how many cases it was taken
(:attr:`Evaluation.dice_cases`). The background is never scored.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from medseg_mem.core.config import InferenceConfig, ModelConfig
from medseg_mem.variants.base import Variant


def dice_per_class(prediction: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Dice of each foreground class, ``(B, K-1)`` float32, for integer label maps ``(B, 1, X, Y, Z)``.

    ``2 |P n L| / (|P| + |L|)`` in float32 from voxel counts (memory: one boolean map per class at a time);
    NaN for a class absent from both maps, 0.0 for one predicted where the label has none (nnU-Net's rule; the
    module docstring says why).

    Example:
        >>> dice_per_class(torch.tensor([[[[[0, 1, 1]]]]]), torch.tensor([[[[[0, 1, 2]]]]]), 4)
        tensor([[0.6667, 0.0000,    nan]])
    """
    scores = [_class_dice(prediction == k, label.to(prediction.device) == k) for k in range(1, num_classes)]
    return torch.stack(scores, dim=1).cpu()


def _class_dice(predicted: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Dice per batch item of two boolean maps ``(B, 1, ...)``: NaN where both are empty (0 / 0)."""
    dims = tuple(range(1, predicted.dim()))
    both = (predicted & truth).sum(dim=dims).float()
    size_p, size_t = predicted.sum(dim=dims).float(), truth.sum(dim=dims).float()
    return 2.0 * both / (size_t + size_p)


def mean_dice(scores: torch.Tensor) -> Tuple[List[float], List[int]]:
    """Per-class mean over the cases of ``scores`` ``(cases, classes)``, NaN left out, and how many cases each
    mean averages (a class scored in no case: NaN over 0 cases).

    Example:
        >>> mean_dice(torch.tensor([[1.0, float("nan")], [0.5, float("nan")]]))
        ([0.75, nan], [2, 0])
    """
    unscored = scores.isnan()
    means = torch.nanmean(scores, dim=0) if unscored.any() else scores.mean(dim=0)  # no NaN: the plain mean, as ever
    return means.tolist(), (~unscored).sum(dim=0).tolist()


def overall_dice(values: Sequence[float]) -> float:
    """The mean of per-class Dice ``values`` with the unscored (NaN) ones left out; NaN when none is scored."""
    scored = [float(value) for value in values if not math.isnan(float(value))]
    return float(np.mean(scored)) if scored else float("nan")  # np.mean: the very figure validation took before


def dice_text(names: Sequence[str], values: Sequence[float]) -> str:
    """``long_rod 0.912, short_rod n/a`` (n/a: the class was in no case, so it was not scored)."""
    return ", ".join(f"{name} {'n/a' if math.isnan(value) else f'{value:.3f}'}" for name, value in zip(names, values))


def synchronize(device: torch.device) -> None:
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


def evaluate_variant(
    variant: Variant,
    nets: Mapping[str, nn.Module],
    cases: Sequence[Tuple[torch.Tensor, torch.Tensor]],
    model: ModelConfig,
    num_classes: int,
    device: torch.device,
    inference: InferenceConfig = None,
) -> Evaluation:
    """Segment each ``(image (1,C,X,Y,Z), label (1,1,X,Y,Z))`` case with the whole variant and score it.

    The first case is run once untimed to warm up (allocator, kernels), then every case is timed. ``inference``
    sets the slab batch, overlap and precision (default: :class:`~medseg_mem.core.config.InferenceConfig`).
    """
    for net in nets.values():
        net.eval()

    def segment(image):
        return variant.segment(nets, image.to(device), model, num_classes, inference=inference)

    scores, seconds = [], []
    with torch.inference_mode():
        segment(cases[0][0])
        for index in range(len(cases)):
            score, elapsed = scored(segment, cases[index], num_classes, device)
            scores.append(score)
            seconds.append(elapsed)
    dice, counts = mean_dice(torch.cat(scores))
    return Evaluation(dice=dice, seconds_per_case=sum(seconds) / len(seconds), n_cases=len(cases), dice_cases=counts)
