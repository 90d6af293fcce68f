"""Resampling between full and reduced resolution, and the cascade's guidance encodings.

Images are resampled trilinearly. Label maps are resampled through their one-hot encoding (trilinear, then
argmax), so thin structures are not dropped as nearest-neighbour resampling would drop them; stage-1
probabilities go the same way. All tensors are batched: ``(B, C, X, Y, Z)``. ``one_hot`` is MONAI's
(:func:`monai.networks.utils.one_hot`), importable from here as before.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from monai.networks.utils import one_hot  # (B, 1, X, Y, Z) integer labels -> (B, K, X, Y, Z) float one-hot
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


def linear_source(
    start: int, stop: int, size_in: int, size_out: int
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices ``(i0, i1)`` and weights of ``i1`` for output positions ``[start, stop)`` of a linear
    resampling from ``size_in`` to ``size_out`` voxels (``align_corners=False``, as :func:`F.interpolate`)."""
    position = (torch.arange(start, stop, dtype=torch.float64) + 0.5) * (size_in / size_out) - 0.5
    position = position.clamp(min=0)
    i0 = position.floor().long().clamp(max=size_in - 1)
    i1 = (i0 + 1).clamp(max=size_in - 1)
    return i0, i1, (position - i0).float()


def upsample_range(low: torch.Tensor, size: Sequence[int], start: int, stop: int) -> torch.Tensor:
    """Trilinear resampling of ``low`` ``(B, C, x, y, z)`` to spatial ``size``, computed only for the output
    slices ``[start, stop)`` of the last axis: ``(B, C, X, Y, stop - start)``.

    Equal (to float rounding) to ``resample_image(low, size)[..., start:stop]``, but its memory is that of the
    slab, not of the whole volume: the cascade's stage-2 guidance is made slab by slab this way.

    Example:
        >>> low = torch.rand(1, 2, 4, 4, 5)
        >>> whole = resample_image(low, (8, 8, 16))
        >>> torch.allclose(upsample_range(low, (8, 8, 16), 3, 9), whole[..., 3:9], atol=1e-6)
        True
    """
    i0, i1, weight = linear_source(start, stop, low.shape[-1], size[-1])
    first, last = int(i0.min()), int(i1.max()) + 1
    chunk = low[..., first:last]
    b, c, x, y, n = chunk.shape
    planes = chunk.permute(0, 1, 4, 2, 3).reshape(b, c * n, x, y)
    planes = F.interpolate(planes, size=tuple(size[:2]), mode="bilinear", align_corners=False)
    planes = planes.reshape(b, c, n, *size[:2])
    weight = weight.to(device=planes.device, dtype=planes.dtype).view(1, 1, -1, 1, 1)
    i0, i1 = (i0 - first).to(planes.device), (i1 - first).to(planes.device)  # (the planner traces this on meta)
    mixed = planes[:, :, i0] * (1 - weight) + planes[:, :, i1] * weight
    return mixed.permute(0, 1, 3, 4, 2).contiguous()


def guidance_range(
    low_label: torch.Tensor, size: Sequence[int], start: int, stop: int, encoding: str, num_classes: int
) -> torch.Tensor:
    """Stage-2 guidance for the slices ``[start, stop)`` of a volume of ``size``, from a low-resolution label
    map ``(B, 1, x, y, z)``: one-hot, upsampled over the range only, argmax, then encoded."""
    labels = upsample_range(one_hot(low_label, num_classes), size, start, stop).argmax(dim=1, keepdim=True)
    return encode_guidance(labels, encoding, num_classes)
