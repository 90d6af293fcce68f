"""Per-class Dice on reconstructed full volumes, and inference time per case.

Scoring of an empty class (MONAI ``DiceMetric(ignore_empty=False)``): when a class is absent from the ground
truth, its Dice is 1.0 if the prediction is empty too and 0.0 otherwise, so a case never drops out of the mean.
The background is never scored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, List, Mapping, Sequence, Tuple

import torch
from monai.metrics import DiceMetric
from torch import nn

from medseg_mem.config import ModelConfig
from medseg_mem.resample import one_hot
from medseg_mem.variants.base import Variant


def dice_per_class(prediction: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Dice of each foreground class, ``(B, K-1)``, for integer label maps ``(B, 1, X, Y, Z)``."""
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=False)
    return metric(one_hot(prediction, num_classes), one_hot(label, num_classes)).cpu()


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
    labels = segment(image).argmax(dim=1, keepdim=True)
    synchronize(device)
    return labels, time.perf_counter() - start


def evaluate_variant(
    variant: Variant,
    nets: Mapping[str, nn.Module],
    cases: Sequence[Tuple[torch.Tensor, torch.Tensor]],
    model: ModelConfig,
    num_classes: int,
    device: torch.device,
) -> Evaluation:
    """Segment each ``(image (1,C,X,Y,Z), label (1,1,X,Y,Z))`` case with the whole variant and score it.

    The first case is run once untimed to warm up (allocator, kernels), then every case is timed.
    """
    for net in nets.values():
        net.eval()

    def segment(image):
        return variant.segment(nets, image.to(device), model, num_classes)

    scores, seconds = [], []
    with torch.inference_mode():
        segment(cases[0][0])
        for image, label in cases:
            labels, elapsed = timed(segment, image, device)
            scores.append(dice_per_class(labels.cpu(), label, num_classes))
            seconds.append(elapsed)
    dice = torch.cat(scores).mean(dim=0).tolist()
    return Evaluation(dice=dice, seconds_per_case=sum(seconds) / len(seconds), n_cases=len(cases))
