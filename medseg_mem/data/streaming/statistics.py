"""What the streaming passes gather and apply: nonzero moments per channel, the foreground box of
``--crop-foreground``, and the per-slab normalisation the in-memory pipeline applies to the whole image.

:class:`NonzeroMoments` accumulates count, mean and the sum of squared deviations of the nonzero voxels in
float64, slab by slab, merging slabs with Chan et al.'s pairwise update (as stable as the two passes of
:func:`~medseg_mem.data.normalize.nonzero_moments`; the sums run in another order, so mean and standard
deviation agree with it to float64 rounding, which float32 output does not see). :func:`normalize_slab_` then
applies exactly the whole-image operations, which are per voxel: ``zscore_nonzero_`` for MRI channels, MONAI's
``ScaleIntensityRange(clip=True)`` with the dataset's CT statistics for CT channels.

Example:
    >>> moments = NonzeroMoments()
    >>> moments.add(torch.tensor([0.0, 1.0, 3.0]))
    >>> moments.count, moments.mean, moments.std
    (2, 2.0, 1.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch

from medseg_mem.data.normalize import zscore_nonzero_
from medseg_mem.data.transforms import scale_ct_

SURVEY_VOXELS = 2**21  # voxels per step of the moments: a few float64 copies of it are the survey's peak


@dataclass
class NonzeroMoments:
    """Running count, mean and sum of squared deviations (``m2``) of nonzero values, in float64."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, values: torch.Tensor) -> None:
        """Fold the nonzero voxels of ``values`` (any shape) into the moments, a bounded chunk at a time."""
        flat = values.reshape(-1)
        for first in range(0, flat.numel(), SURVEY_VOXELS):
            self._merge(flat[first : first + SURVEY_VOXELS])

    def _merge(self, chunk: torch.Tensor) -> None:
        nonzero = chunk[chunk != 0]
        count = int(nonzero.numel())
        if count == 0:
            return
        mean = float(nonzero.sum(dtype=torch.float64)) / count
        m2 = float((nonzero.double() - mean).square_().sum())
        total = self.count + count
        delta = mean - self.mean
        self.mean += delta * count / total
        self.m2 += m2 + delta * delta * self.count * count / total
        self.count = total

    @property
    def std(self) -> float:
        """Population standard deviation; 1 when it is 0 (as the in-memory normalisation)."""
        return math.sqrt(self.m2 / self.count) if self.count and self.m2 > 0 else 1.0


@dataclass
class ForegroundBox:
    """Running bounding box of the voxels nonzero in any channel (``CropForegroundd(select_fn=nonzero)``).

    Coordinates are those of the blocks given to :meth:`add` (their last axis offset by ``first``).
    """

    low: List[Optional[int]] = field(default_factory=lambda: [None, None, None])
    high: List[Optional[int]] = field(default_factory=lambda: [None, None, None])

    def add(self, block: torch.Tensor, first: int) -> None:
        """Fold in ``block`` ``(C, X, Y, n)``, whose last axis starts at slice ``first``."""
        mask = (block != 0).any(dim=0)
        for axis in range(3):
            hits = torch.nonzero(mask.any(dim=tuple(a for a in range(3) if a != axis))).view(-1)
            if hits.numel() == 0:
                return
            offset = first if axis == 2 else 0
            low, high = int(hits[0]) + offset, int(hits[-1]) + offset + 1
            self.low[axis] = low if self.low[axis] is None else min(self.low[axis], low)
            self.high[axis] = high if self.high[axis] is None else max(self.high[axis], high)

    def box(self) -> Tuple[Tuple[int, int, int], Tuple[int, int, int]]:
        """``(start, end)`` per axis; ``((0, 0, 0), (0, 0, 0))`` when no voxel was nonzero (as MONAI)."""
        if self.low[0] is None:
            return (0, 0, 0), (0, 0, 0)
        return tuple(self.low), tuple(self.high)


def zscore_channels(normalization: Sequence[dict]) -> List[int]:
    """Channels z-scored over their own nonzero voxels (every channel that is not CT)."""
    return [index for index, norm in enumerate(normalization) if norm["scheme"] != "ct"]


def normalize_slab_(slab: torch.Tensor, normalization: Sequence[dict], moments: Sequence[NonzeroMoments]) -> \
        torch.Tensor:  # fmt: skip
    """Normalise a float32 slab ``(C, X, Y, n)`` in place as the whole-image pipeline would; return it.

    Args:
        slab: a slab of the image after orientation, resampling and cropping.
        normalization: the settings' ``"normalization"`` list, one rule per channel.
        moments: per channel, the scan's nonzero moments (used for the z-scored channels only).
    """
    for channel, norm in enumerate(normalization):
        if norm["scheme"] == "ct":
            scale_ct_(slab[channel], norm)
        elif moments[channel].count:
            zscore_nonzero_(slab[channel], moments[channel].mean, moments[channel].std)
    return slab
