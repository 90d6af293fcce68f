"""Guidance noise: train the cascade's stage 2 on a stage-1-like, imperfect segmentation.

Stage 2 is trained with guidance made from the ground truth (downsampled to stage-1 resolution), but at test
time it gets stage 1's prediction, whose boundaries are off by about a low-resolution voxel. Trained on clean
guidance, stage 2 learns to copy it and inherits every stage-1 error. nnU-Net's cascade perturbs the guidance
during training with random binary morphology (dilation, erosion, opening, closing) per foreground class, so
stage 2 learns to place boundaries from the image and use the guidance for the class. This module does the
same on the low-resolution label map, per sample, before the slab's guidance is upsampled from it: a shift of
one low-resolution voxel (about 1 / downsample full-resolution voxels), the size of stage 1's errors.
Measured on the embedded default it did not pay (seed 0: cascade 95.3 / 91.1 with ``P = 0.5``, 95.8 / 93.0
without; see docs/method.md), so ``--guidance-noise`` is off by default.

Example:
    >>> label = torch.zeros(1, 5, 5, 5, dtype=torch.uint8); label[0, 2, 2, 1:4] = 1
    >>> noisy = perturb_label(label, num_classes=2, probability=1.0, rng=np.random.RandomState(0))
    >>> noisy.shape, noisy.dtype
    (torch.Size([1, 5, 5, 5]), torch.uint8)
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

OPERATIONS = ("dilate", "erode", "open", "close")


def dilate(mask: torch.Tensor) -> torch.Tensor:
    """Binary dilation of a ``(1, 1, x, y, z)`` float mask by a 3x3x3 cube."""
    return F.max_pool3d(mask, kernel_size=3, stride=1, padding=1)


def erode(mask: torch.Tensor) -> torch.Tensor:
    """Binary erosion by a 3x3x3 cube (the volume's outside counts as inside, so borders do not erode)."""
    return -F.max_pool3d(-mask, kernel_size=3, stride=1, padding=1)


def morph(mask: torch.Tensor, operation: str) -> torch.Tensor:
    """Apply one of :data:`OPERATIONS` to a float mask."""
    if operation == "open":
        return dilate(erode(mask))
    if operation == "close":
        return erode(dilate(mask))
    return dilate(mask) if operation == "dilate" else erode(mask)


def perturb_label(
    label: torch.Tensor, num_classes: int, probability: float, rng: np.random.RandomState
) -> torch.Tensor:
    """A perturbed copy of a ``(1, x, y, z)`` uint8 label map (the input is left as it is).

    Each foreground class, with ``probability``, gets one random operation of :data:`OPERATIONS`: voxels it
    removes become background, voxels it adds take the class where they were background.

    Args:
        label: the label map at stage-1 resolution (the cached ``low_label`` of a guided stage).
        num_classes: classes including background.
        probability: chance that a foreground class is perturbed (0 returns an unchanged copy).
        rng: the sampler's random state, so a sample's noise is a function of the run's seed.
    """
    noisy = label.clone()
    for cls in range(1, num_classes):
        draw, operation = rng.random_sample(), OPERATIONS[rng.randint(len(OPERATIONS))]
        mask = label == cls
        if draw >= probability or not bool(mask.any()):
            continue
        changed = morph(mask[None].float(), operation)[0] > 0.5
        noisy[mask & ~changed] = 0
        noisy[changed & (noisy == 0) & ~mask] = cls
    return noisy
