"""The cascade's stage-1 input made from a stream of slabs: trilinear resampling to a small size, as
``F.interpolate(image, size, mode="trilinear", align_corners=False)`` makes it from the whole image.

PyTorch's trilinear kernel nests its three linear interpolations with the last axis innermost: each output voxel
mixes two slices of the last axis (weights from ``scale = in / out``, ``src = max(scale * (k + 0.5) - 0.5, 0)``),
then two rows, then two columns. Here each output slice mixes its two input slices as they stream past (only
the previous slab's last slice is kept), then ``F.interpolate(mode="bilinear")`` does the rows and columns with
the same weights. Only the rounding of the multiply-adds can differ (the kernel may fuse them); the tests bound
the difference.

Example:
    >>> image = torch.rand(2, 10, 10, 20)
    >>> slabs = ((start, image[..., start : start + 4]) for start in range(0, 20, 4))
    >>> low = downsample_stream(slabs, image.shape, (3, 3, 6))
    >>> whole = F.interpolate(image[None], size=(3, 3, 6), mode="trilinear", align_corners=False)[0]
    >>> bool((low - whole).abs().max() < 1e-5)
    True
"""

from __future__ import annotations

from typing import Iterable, Sequence, Tuple

import torch
from torch.nn import functional as F


def linear_weights(size_in: int, size_out: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(i0, i1, w0, w1)`` of each output index of a linear resampling (``align_corners=False``, ATen's rules:
    float32 ``scale = size_in / size_out``, the source index clamped at 0, ``i1 = i0`` on the last voxel)."""
    scale = torch.tensor(size_in / size_out, dtype=torch.float32)
    source = (scale * (torch.arange(size_out, dtype=torch.float32) + 0.5) - 0.5).clamp(min=0)
    first = source.floor().long().clamp(max=size_in - 1)
    second = first + (first < size_in - 1).long()
    weight = (source - first.float()).clamp(0, 1)
    return first, second, 1 - weight, weight


def downsample_stream(slabs: Iterable[Tuple[int, torch.Tensor]], shape: Sequence[int], size: Sequence[int]) -> \
        torch.Tensor:  # fmt: skip
    """Trilinear resampling of an image given as consecutive slabs to spatial ``size``.

    Args:
        slabs: ``(start, slab)`` pairs, slabs ``(C, X, Y, n)`` in order along the last axis, covering it.
        shape: ``(C, X, Y, Z)`` of the whole image.
        size: the output's spatial size ``(x, y, z)``.

    Returns:
        ``(C, x, y, z)`` float32.
    """
    channels, depth = shape[0], shape[3]
    first, second, weight0, weight1 = linear_weights(depth, size[2])
    out = torch.empty(channels, *size, dtype=torch.float32)
    previous, done = None, 0
    for start, slab in slabs:
        stop = start + slab.shape[-1]
        while done < size[2] and int(second[done]) < stop:
            plane0 = _plane(slab, previous, start, int(first[done]))
            plane1 = _plane(slab, previous, start, int(second[done]))
            mixed = plane0 * weight0[done] + plane1 * weight1[done]
            out[..., done] = F.interpolate(mixed[None], size=tuple(size[:2]), mode="bilinear", align_corners=False)[0]
            done += 1
        previous = slab[..., -1].clone()
    return out


def _plane(slab: torch.Tensor, previous: torch.Tensor, start: int, index: int) -> torch.Tensor:
    return slab[..., index - start] if index >= start else previous
