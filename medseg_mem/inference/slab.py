"""Slab-wise inference: run a network on fixed-depth slabs cut along one spatial axis and stitch them back.

This is the inference half of the ``patch`` variant (thesis 3.3): the volume is cut into non-overlapping slabs
of ``slab_size`` voxels along one axis, the last slab is zero-padded to full size, the network sees
``sw_batch_size`` slabs at a time and the predictions are written straight into the output volume.
Unlike :class:`monai.inferers.SlidingWindowInferer` no importance or count map is kept, so the only
full-size tensors are the input and the output. With ``output="labels"`` the output is itself compact: each
slab group's logits become labels at once (argmax over the channels) in a preallocated uint8 map, so no
full-size float tensor exists besides the input. The input may also be a
:class:`~medseg_mem.inference.source.SlabSource` that makes each slab on demand (the cascade's guided input).

With ``overlap > 0`` consecutive slabs share that fraction of their thickness and are blended with Gaussian
weights as MONAI and nnU-Net do, in a rolling buffer one slab long (:mod:`~medseg_mem.inference.blend`)
instead of full-volume accumulators. ``overlap=0`` runs exactly the non-overlapping code above.
"""

from __future__ import annotations

import contextlib
import contextvars
import numbers
from typing import Any, Callable, Iterator, List, Sequence

import torch
from monai.inferers import Inferer
from torch.nn import functional as F

from medseg_mem.core.inference_config import check_overlap
from medseg_mem.core.errors import OptionError
from medseg_mem.inference.blend import RollingBlend, overlapping_starts, slab_step
from medseg_mem.inference.labels import argmax_into, empty_labels
from medseg_mem.inference.source import SlabSource

SPATIAL_AXES = (0, 1, 2, -1, -2, -3)
OUTPUTS = ("logits", "labels")
_REPRESENTATIVE = contextvars.ContextVar("representative_slabs", default=False)


@contextlib.contextmanager
def representative_slabs() -> Iterator[None]:
    """Within this block :class:`SlabInferer` runs only the slab groups whose memory can differ.

    Those are the first group (no output yet), the second (output alive; each prediction is freed before the
    next group runs) and the last (maybe smaller, maybe padded). Every group in between is full and repeats the
    second's allocations
    exactly, so a memory trace (:mod:`medseg_mem.memory.trace`) of the shortened loop has the same peak at a
    cost that does not grow with the number of slabs. The output is left incomplete: for tracing only.
    """
    token = _REPRESENTATIVE.set(True)
    try:
        yield
    finally:
        _REPRESENTATIVE.reset(token)


def slab_groups(starts: Sequence[int], group_size: int, representative: bool = False) -> List[Sequence[int]]:
    """``starts`` cut into groups of ``group_size``; with ``representative`` only the first two and the last.

    Example:
        >>> slab_groups([0, 16, 32, 48, 64], 1, representative=True)
        [[0], [16], [64]]
    """
    count = -(-len(starts) // group_size)
    kept = (0, 1, count - 1) if representative and count > 3 else range(count)
    return [starts[index * group_size : (index + 1) * group_size] for index in kept]


def slab_starts(length: int, slab_size: int) -> List[int]:
    """Start index of every slab that covers an axis of ``length`` voxels.

    Args:
        length: voxels along the axis (>= 1).
        slab_size: voxels per slab (>= 1); the last slab may reach past the end.

    Raises:
        OptionError: if ``length`` or ``slab_size`` is not a positive integer.

    Example:
        >>> slab_starts(35, 16)
        [0, 16, 32]
    """
    return list(_slab_range(length, slab_size))


def _slab_range(length: int, slab_size: int) -> range:
    """:func:`slab_starts` as a ``range`` (cheap for any number of slabs)."""
    _check_positive_int("length", length)
    _check_positive_int("slab_size", slab_size)
    return range(0, length, slab_size)


def cut_slab(tensor: torch.Tensor, start: int, slab_size: int, axis: int) -> torch.Tensor:
    """Return ``slab_size`` voxels of ``tensor`` from ``start`` along ``axis``, zero-padded past the end.

    Args:
        tensor: any tensor, e.g. ``(B, C, X, Y, Z)``.
        start: first index along ``axis`` (0 <= start < size).
        slab_size: voxels in the returned slab.
        axis: tensor dimension to cut (negative values count from the end).

    Raises:
        OptionError: if ``start`` is outside the axis or ``slab_size`` is not positive.

    Example:
        >>> cut_slab(torch.ones(1, 1, 2, 2, 5), 4, 3, axis=-1)[0, 0, 0, 0].tolist()
        [1.0, 0.0, 0.0]
    """
    _check_positive_int("slab_size", slab_size)
    axis = axis % tensor.dim()
    length = tensor.shape[axis]
    if not 0 <= start < length:
        raise OptionError("start", f"must be in [0, {length}) for an axis of {length} voxels", start)
    slab = tensor.narrow(axis, start, min(slab_size, length - start))
    missing = slab_size - slab.shape[axis]
    if missing == 0:
        return slab
    pad = [0, 0] * (tensor.dim() - 1 - axis) + [0, missing]
    return F.pad(slab, pad)


class SlabInferer(Inferer):
    """Inference on slabs along one spatial axis, side by side or overlapping, in the style of MONAI's inferers.

    Args:
        slab_size: voxels per slab along ``spatial_axis`` (spec: 16).
        spatial_axis: spatial axis to cut, counted over ``(X, Y, Z)``: 0, 1, 2 or -1 (the last, default).
        sw_batch_size: slabs per network call.
        output: ``"logits"`` (default): the stitched network output ``(B, K, X, Y, Z)``; ``"labels"``: the
            argmax over its channels, ``(B, 1, X, Y, Z)`` uint8 (int16 beyond 255 classes), made slab by slab.
        device: where the output is kept (as MONAI's ``device``; default: the network output's device), e.g.
            the network on CUDA and the label map on the CPU.
        overlap: fraction of a slab shared with the next, in ``[0, 0.5]``; above 0 the slabs are blended with
            Gaussian weights (MONAI ``mode="gaussian"``) in a rolling buffer of one slab.

    Raises:
        OptionError: if an argument breaks its rule (the message names it, the rule and the value).

    Example:
        >>> inferer = SlabInferer(slab_size=16)
        >>> inferer(torch.zeros(1, 1, 8, 8, 35), lambda x: x + 1).shape
        torch.Size([1, 1, 8, 8, 35])
        >>> labels = SlabInferer(slab_size=16, output="labels", device="cpu")
        >>> labels(torch.zeros(1, 1, 8, 8, 35), lambda x: x.repeat(1, 3, 1, 1, 1)).dtype
        torch.uint8
    """

    def __init__(
        self, slab_size: int = 16, spatial_axis: int = -1, sw_batch_size: int = 1, output: str = "logits",
        device: Any = None, overlap: float = 0.0,
    ) -> None:  # fmt: skip
        _check_positive_int("slab_size", slab_size)
        _check_positive_int("sw_batch_size", sw_batch_size)
        if isinstance(spatial_axis, bool) or spatial_axis not in SPATIAL_AXES:
            raise OptionError("spatial_axis", "must be one of 0, 1, 2 or -1 (the last spatial axis)", spatial_axis)
        if output not in OUTPUTS:
            raise OptionError("output", "must be 'logits' or 'labels'", output)
        self.slab_size = int(slab_size)
        self.spatial_axis = int(spatial_axis) % 3
        self.sw_batch_size = int(sw_batch_size)
        self.output = output
        self.device = None if device is None else torch.device(device)
        self.overlap = check_overlap(overlap)

    def __call__(
        self, inputs: torch.Tensor | SlabSource, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """Run ``network`` slab by slab on ``inputs`` ``(B, C, X, Y, Z)``; return ``(B, K, X, Y, Z)`` logits or
        ``(B, 1, X, Y, Z)`` labels (see ``output``).

        Args:
            inputs: a batch of 3D images, or a :class:`~medseg_mem.inference.source.SlabSource` of that shape.
            network: maps ``(n * B, C, ...slab...)`` to ``(n * B, K, ...slab...)``.
            args: extra positional arguments for ``network``.
            kwargs: extra keyword arguments for ``network``.

        Raises:
            OptionError: if ``inputs`` is not 5D.
            ValueError: if the network output does not keep the slab's batch and spatial size.
        """
        _check_inputs(inputs)
        axis = 2 + self.spatial_axis
        if self.overlap > 0:
            return self._blended(inputs, axis, network, *args, **kwargs)
        starts = _slab_range(inputs.shape[axis], self.slab_size)
        output = None
        for group in slab_groups(starts, self.sw_batch_size, _REPRESENTATIVE.get()):
            prediction = self._run_group(inputs, group, axis, network, *args, **kwargs)
            if output is None:
                output = self._allocate(inputs, prediction)
            self._stitch(output, prediction, group, inputs.shape[0], axis)
            del prediction
        return output

    def _blended(self, inputs, axis, network, *args, **kwargs) -> torch.Tensor:
        """Overlapping slabs, each group's predictions added to a :class:`RollingBlend` as they come."""
        step = slab_step(self.slab_size, self.overlap)
        starts = overlapping_starts(inputs.shape[axis], self.slab_size, step)
        blend, batch_size = None, inputs.shape[0]
        for group in slab_groups(starts, self.sw_batch_size, _REPRESENTATIVE.get()):
            prediction = self._run_group(inputs, group, axis, network, *args, **kwargs)
            if blend is None:
                blend = RollingBlend(self._allocate(inputs, prediction), self.slab_size, axis, self.output == "labels")
            for index, start in enumerate(group):
                blend.add(prediction[index * batch_size : (index + 1) * batch_size], start)
            del prediction
        return blend.finish()

    def _run_group(self, inputs, group, axis, network, *args, **kwargs) -> torch.Tensor:
        """Cut the slabs starting at ``group``, batch them along dim 0 and run the network once."""
        slabs = [_cut(inputs, start, self.slab_size, axis) for start in group]
        batch = slabs[0] if len(slabs) == 1 else torch.cat(slabs, dim=0)
        del slabs
        prediction = network(batch, *args, **kwargs)
        if not isinstance(prediction, torch.Tensor):
            raise TypeError(f"network must return a tensor; got {type(prediction).__name__}")
        expected = (batch.shape[0], *batch.shape[2:])
        if (prediction.shape[0], *prediction.shape[2:]) != expected:
            raise ValueError(
                f"network output must keep the slab batch and spatial size {expected}; got {tuple(prediction.shape)}"
            )
        return prediction

    def _allocate(self, inputs, prediction: torch.Tensor) -> torch.Tensor:
        """The output volume, ``(B, K, X, Y, Z)`` logits or ``(B, 1, X, Y, Z)`` labels, on the output device."""
        shape = list(inputs.shape)
        shape[1] = prediction.shape[1]
        device = prediction.device if self.device is None else self.device
        if self.output == "labels":
            return empty_labels(shape, prediction.shape[1], device)
        return torch.zeros(shape, dtype=prediction.dtype, device=device)

    def _stitch(self, output, prediction, group, batch_size, axis) -> None:
        """Write each slab's prediction (its padding cropped) into ``output``: copied, or as labels."""
        length = output.shape[axis]
        for index, start in enumerate(group):
            keep = min(self.slab_size, length - start)
            piece = prediction[index * batch_size : (index + 1) * batch_size].narrow(axis, 0, keep)
            if self.output == "labels":
                argmax_into(piece, output.narrow(axis, start, keep), axis=axis)
            else:
                output.narrow(axis, start, keep).copy_(piece)


def _check_inputs(inputs) -> None:
    """Raise :class:`OptionError` unless ``inputs`` is a 5D tensor or a 5D :class:`SlabSource`."""
    if isinstance(inputs, SlabSource) and len(inputs.shape) == 5:
        return
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 5:
        shape = tuple(inputs.shape) if isinstance(inputs, (torch.Tensor, SlabSource)) else type(inputs).__name__
        raise OptionError("inputs", "must be a 5D tensor (B, C, X, Y, Z)", shape)


def _cut(inputs, start: int, slab_size: int, axis: int) -> torch.Tensor:
    """One zero-padded slab of a tensor (:func:`cut_slab`) or of a :class:`SlabSource`."""
    if isinstance(inputs, SlabSource):
        return inputs.cut(start, slab_size, axis)
    return cut_slab(inputs, start, slab_size, axis)


def _check_positive_int(name: str, value: Any) -> None:
    """Raise :class:`OptionError` unless ``value`` is an int >= 1 (bool excluded)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise OptionError(name, "must be an integer >= 1", value)
