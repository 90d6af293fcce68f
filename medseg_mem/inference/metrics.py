"""Per-class Dice, counted on label maps (one class at a time), never on one-hot float volumes.

Scoring of an absent class (nnU-Net's rule; MONAI ``DiceMetric(ignore_empty=True)`` for an empty ground truth):
a class absent from both the ground truth and the prediction of a case has no Dice there (NaN) and is left out
of the means (:func:`mean_dice`), so a case without the class cannot score it 100 %; a class predicted where the
ground truth has none scores 0.0. Each class's mean says over how many cases it was taken. The background is never
scored. Training's validation, ``run``'s test evaluation (:mod:`medseg_mem.runner.evaluation`) and ``show`` use it.
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import numpy as np
import torch

from medseg_mem.core.units import dice_percent


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
    """``(%) long_rod 91.20, short_rod n/a``: Dice in percent, the unit named once (n/a: the class was in no case,
    so it was not scored)."""
    scores = (f"{name} {'n/a' if math.isnan(value) else dice_percent(value)}" for name, value in zip(names, values))
    return "(%) " + ", ".join(scores)
