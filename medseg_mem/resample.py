"""Resampling between full and reduced resolution, and the cascade's guidance encodings.

Images are resampled trilinearly. Label maps are resampled through their one-hot encoding (trilinear, then
argmax), so thin structures are not dropped as nearest-neighbour resampling would drop them; stage-1
probabilities go the same way. All tensors are batched: ``(B, C, X, Y, Z)``.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch.nn import functional as F


def scaled_size(size: Sequence[int], factor: float) -> Tuple[int, ...]:
    """Spatial size after scaling by ``factor`` (each axis rounded, at least 1 voxel)."""
    return tuple(max(1, int(round(s * factor))) for s in size)


def resample_image(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Trilinear resampling of a ``(B, C, X, Y, Z)`` image to ``size``."""
    return F.interpolate(image, size=tuple(size), mode="trilinear", align_corners=False)


def resample_probabilities(probabilities: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Trilinear resampling of class probabilities (or one-hot maps) to ``size``."""
    return resample_image(probabilities, size)


def one_hot(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(B, 1, X, Y, Z)`` integer labels -> ``(B, K, X, Y, Z)`` float one-hot."""
    return F.one_hot(label[:, 0].long(), num_classes).movedim(-1, 1).float()


def resample_label(label: torch.Tensor, size: Sequence[int], num_classes: int) -> torch.Tensor:
    """Resample integer labels ``(B, 1, X, Y, Z)`` to ``size`` via one-hot interpolation and argmax."""
    return resample_probabilities(one_hot(label, num_classes), size).argmax(dim=1, keepdim=True)


def guidance_channels(encoding: str, num_classes: int) -> int:
    """Channels the guidance adds to stage 2's input: 1 for ``label``, K-1 for ``onehot``."""
    return 1 if encoding == "label" else num_classes - 1


def encode_guidance(label: torch.Tensor, encoding: str, num_classes: int) -> torch.Tensor:
    """Turn a label map ``(B, 1, X, Y, Z)`` into guidance channels for stage 2.

    ``label``: one channel holding class index / (K - 1), in [0, 1] (the thesis concatenates the segmentation).
    ``onehot``: one channel per foreground class (nnU-Net's cascade).
    """
    if encoding == "label":
        return label.float() / max(1, num_classes - 1)
    return one_hot(label, num_classes)[:, 1:]


def round_trip_label(label: torch.Tensor, factor: float, num_classes: int) -> torch.Tensor:
    """Ground-truth guidance for training stage 2: the label downsampled by ``factor`` and upsampled again."""
    size = label.shape[2:]
    low = resample_label(label, scaled_size(size, factor), num_classes)
    return resample_label(low, size, num_classes)
