"""Overlapping slabs blended with Gaussian importance weights, in a rolling buffer one slab long.

MONAI's ``SlidingWindowInferer(mode="gaussian")`` and nnU-Net weight each window's prediction by a Gaussian
centred on the window and divide by the summed weights; both keep a full-volume float accumulator of every
class plus a full-volume weight map. Along one slab axis that is unnecessary: slabs arrive in order, so once
a slab starting at ``s`` has been added, no later slab touches the voxels before ``s``. :class:`RollingBlend`
keeps only the ``slab_size`` positions that can still change, writes the finished positions (divided by their
summed weights, or as labels) into the output and shifts the rest.

Every slab covers the whole plane, so only the Gaussian along the slab axis matters
(:func:`monai.data.utils.compute_importance_map`, ``sigma_scale`` 0.125): where MONAI's windows are the same
slabs, the blend equals ``SlidingWindowInferer(mode="gaussian", sigma_scale=(1e6, 1e6, 0.125))`` to float32
rounding (tested). MONAI's default 3D map differs slightly near the plane's borders, where its product of
three Gaussians is clamped at 1e-3. The last slab is zero-padded past the end (thesis), where MONAI moves its
last window back inside the volume.
"""

from __future__ import annotations

from typing import List

import torch

from medseg_mem.inference.labels import argmax_into

SIGMA_SCALE = 0.125  # MONAI's and nnU-Net's default: sigma = slab_size / 8


def slab_step(slab_size: int, overlap: float) -> int:
    """Distance between slab starts: ``int(slab_size * (1 - overlap))``, at least 1 (MONAI's scan interval).

    Example:
        >>> slab_step(16, 0.0), slab_step(16, 0.5), slab_step(1, 0.5)
        (16, 8, 1)
    """
    return max(1, int(slab_size * (1 - overlap)))


def overlapping_starts(length: int, slab_size: int, step: int) -> range:
    """Starts ``0, step, 2 * step, ...`` up to the first slab that reaches the end (it may reach past it).

    With ``step == slab_size`` these are the non-overlapping slabs ``range(0, length, slab_size)``.

    Example:
        >>> list(overlapping_starts(35, 16, 8)), list(overlapping_starts(35, 16, 16))
        ([0, 8, 16, 24], [0, 16, 32])
    """
    return range(0, max(length - slab_size, 0) + step, step)


def gaussian_weights(slab_size: int, device=None) -> torch.Tensor:
    """1D Gaussian importance weights of one slab (float64, peak 1, no zero), as MONAI computes them."""
    from monai.data.utils import compute_importance_map

    weights = compute_importance_map((slab_size,), mode="gaussian", sigma_scale=SIGMA_SCALE, device="cpu")
    return weights.to(device=device, dtype=torch.float64)


class RollingBlend:
    """Accumulate weighted slab predictions in a buffer of ``slab_size`` positions and finish them in order.

    Args:
        output: the ``(B, K, ...)`` logits or ``(B, 1, ...)`` label volume the finished positions go to.
        slab_size: voxels per slab along ``axis``.
        axis: the tensor dimension the slabs are cut along.
        labels: write the argmax (``output`` is a label map) instead of the blended values.

    Logits are accumulated in float64, so an identity network returns its input exactly after rounding to
    float32; labels only need the order of the channels and accumulate in float32.

    Example:
        >>> out = torch.zeros(1, 1, 1, 1, 6)
        >>> blend = RollingBlend(out, slab_size=4, axis=4)
        >>> for start in (0, 2):
        ...     blend.add(torch.arange(start, start + 4.0).view(1, 1, 1, 1, 4), start)
        >>> blend.finish().flatten().tolist()
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    """

    def __init__(self, output: torch.Tensor, slab_size: int, axis: int, labels: bool = False) -> None:
        self.output, self.slab_size, self.axis, self.labels = output, int(slab_size), axis, labels
        self.origin = 0
        self.buffer = None
        shape = [1] * output.dim()
        shape[axis] = self.slab_size
        self.weights = gaussian_weights(self.slab_size, output.device)
        self.view_shape = shape
        self.summed = torch.zeros(self.slab_size, dtype=torch.float64, device=output.device)

    def add(self, piece: torch.Tensor, start: int) -> None:
        """Add one slab's prediction ``piece`` (``slab_size`` long along ``axis``) that starts at ``start``."""
        if self.buffer is None:
            shape = list(self.output.shape)
            shape[1], shape[self.axis] = piece.shape[1], self.slab_size
            dtype = torch.float32 if self.labels else torch.float64
            layout = torch.channels_last_3d if len(shape) == 5 else torch.contiguous_format  # fast argmax
            self.buffer = torch.empty(shape, dtype=dtype, device=self.output.device, memory_format=layout).zero_()
        self._advance(start)
        weights = self.weights.to(self.buffer.dtype).view(self.view_shape)
        self.buffer.addcmul_(piece.to(self.buffer.device), weights)
        self.summed += self.weights

    def finish(self) -> torch.Tensor:
        """Write the positions still in the buffer and return the output."""
        if self.buffer is not None:
            self._flush(self.slab_size)
        return self.output

    def _advance(self, start: int) -> None:
        """Finish the positions before ``start`` and move the buffer's origin to ``start``."""
        shift = start - self.origin
        if shift <= 0:
            return
        self._flush(min(shift, self.slab_size))
        self._shift(shift)
        self.origin = start

    def _shift(self, shift: int) -> None:
        """Move the buffer's contents ``shift`` positions towards its start and clear the freed end."""
        kept = self.slab_size - shift
        for tensor, axis in ((self.buffer, self.axis), (self.summed, 0)):
            if kept > 0:
                tensor.narrow(axis, 0, kept).copy_(tensor.narrow(axis, shift, kept).clone())
            tensor.narrow(axis, max(kept, 0), self.slab_size - max(kept, 0)).zero_()

    def _flush(self, count: int) -> None:
        """Write the first ``count`` buffer positions (those inside the volume) to the output."""
        keep = min(count, self.output.shape[self.axis] - self.origin)
        if keep <= 0:
            return
        region = self.buffer.narrow(self.axis, 0, keep)
        target = self.output.narrow(self.axis, self.origin, keep)
        if self.labels:
            argmax_into(region, target, axis=self.axis)
            return
        summed = self.summed[:keep].view(_view(self.view_shape, self.axis, keep))
        target.copy_(region / summed)


def _view(shape: List[int], axis: int, length: int) -> List[int]:
    """``shape`` with ``length`` at ``axis``."""
    shape = list(shape)
    shape[axis] = length
    return shape
