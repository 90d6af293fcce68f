"""Per-class Dice on reconstructed full volumes, and inference time per case.

Dice is counted on the label maps themselves (one class at a time), never on one-hot float volumes.
Scoring of an empty class (MONAI ``DiceMetric(ignore_empty=False)``): when a class is absent from the ground
truth, its Dice is 1.0 if the prediction is empty too and 0.0 otherwise, so a case never drops out of the mean.
The background is never scored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, List, Mapping, Sequence, Tuple

import torch
from torch import nn

from medseg_mem.config import InferenceConfig, ModelConfig
from medseg_mem.variants.base import Variant


def dice_per_class(prediction: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Dice of each foreground class, ``(B, K-1)`` float32, for integer label maps ``(B, 1, X, Y, Z)``.

    The same numbers as MONAI ``DiceMetric(include_background=False, reduction="none", ignore_empty=False)``
    on one-hot maps (``2 |P n L| / (|P| + |L|)`` in float32; 1.0 or 0.0 for a class absent from the label),
    from voxel counts: memory is one boolean map per class at a time.

    Example:
        >>> dice_per_class(torch.tensor([[[[[0, 1, 1]]]]]), torch.tensor([[[[[0, 1, 2]]]]]), 3)
        tensor([[0.6667, 0.0000]])
    """
    scores = [_class_dice(prediction == k, label.to(prediction.device) == k) for k in range(1, num_classes)]
    return torch.stack(scores, dim=1).cpu()


def _class_dice(predicted: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Dice per batch item of two boolean maps ``(B, 1, ...)``, with MONAI's rule for an empty ``truth``."""
    dims = tuple(range(1, predicted.dim()))
    both = (predicted & truth).sum(dim=dims).float()
    size_p, size_t = predicted.sum(dim=dims).float(), truth.sum(dim=dims).float()
    dice = 2.0 * both / (size_t + size_p)
    empty = torch.where(size_p > 0, torch.zeros_like(dice), torch.ones_like(dice))
    return torch.where(size_t > 0, dice, empty)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Evaluation:
    """Mean Dice per foreground class over the cases, and mean inference seconds per case."""

    dice: List[float]
    seconds_per_case: float
    n_cases: int


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
    sets the slab batch, overlap and precision (default: :class:`~medseg_mem.config.InferenceConfig`).
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
    dice = torch.cat(scores).mean(dim=0).tolist()
    return Evaluation(dice=dice, seconds_per_case=sum(seconds) / len(seconds), n_cases=len(cases))
