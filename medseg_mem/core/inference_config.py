"""How a trained variant segments a volume (:class:`InferenceConfig`): ``run``'s evaluation, ``predict`` and
``plan`` share it. Its checks (overlap, mirroring axes) serve the CLI too. Free of torch, like
:mod:`medseg_mem.core.config`, which re-exports it.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Tuple

from medseg_mem.core.errors import OptionError, check_choice
from medseg_mem.core.record import Record
from medseg_mem.core.names import MAX_OVERLAP, PRECISION_NAMES


def check_overlap(overlap) -> float:
    """``overlap`` as a float in ``[0, MAX_OVERLAP]``.

    Raises:
        OptionError: naming ``--overlap``, the rule and the value.
    """
    if isinstance(overlap, bool) or not isinstance(overlap, numbers.Real) or not 0 <= overlap <= MAX_OVERLAP:
        raise OptionError("--overlap", f"must be a fraction of a slab in [0, {MAX_OVERLAP}] (0: slabs side by side)",
                          overlap)  # fmt: skip
    return float(overlap)


@dataclass(frozen=True)
class InferenceConfig(Record):
    """How a trained variant segments a volume: ``run``'s evaluation, ``predict`` and ``plan`` share it.

    Args:
        sw_batch_size: slabs per network call (MONAI's ``sw_batch_size``): more is faster on a GPU, and needs
            that many slabs' activations at once.
        overlap: fraction of a slab shared with the next, in ``[0, 0.5]``; above 0 the slabs are blended with
            Gaussian weights (MONAI ``mode="gaussian"``, nnU-Net) in a rolling buffer one slab long. 0 is the
            thesis: slabs side by side.
        precision: ``"fp32"``, or autocast of the network passes to ``"bf16"`` / ``"fp16"`` (about half the
            activation memory; labels may differ from fp32 at a few voxels).
        channels_last: run the networks with channels-last weights
            (:func:`~medseg_mem.models.build.channels_last_layout`): on the CPU oneDNN then convolves without
            reordering each input and output into its blocked layout (spec U-Net on one 256x256x16 slab: 540 MiB
            instead of 782, 1.1x faster). Labels agree with the contiguous layout to rounding (1 voxel in 16.7
            million differed on a 512x512x64 scan).
        tta: test-time mirroring (nnU-Net): every network call is averaged, as softmax probabilities, over the
            ``2**k`` flips of the ``k`` axes of ``tta_axes`` (:mod:`~medseg_mem.inference.mirror`); whole-volume
            stages mirror the volume, slab stages each slab. ``2**k`` times the network time.
        tta_axes: the spatial axes (0, 1, 2 of X, Y, Z; the slab axis is 2) that ``tta`` mirrors (default: all).

    Raises:
        OptionError: naming the option, its rule and the value.
    """

    sw_batch_size: int = 1
    overlap: float = 0.0
    precision: str = "fp32"
    channels_last: bool = True
    tta: bool = False
    tta_axes: Tuple[int, ...] = (0, 1, 2)

    def __post_init__(self) -> None:
        if isinstance(self.sw_batch_size, bool) or not isinstance(self.sw_batch_size, int) or self.sw_batch_size < 1:
            raise OptionError("--sw-batch-size", "must be a whole number of slabs >= 1", self.sw_batch_size)
        check_overlap(self.overlap)
        check_choice("--precision", self.precision, PRECISION_NAMES)
        check_tta_axes(self.tta_axes)

    @property
    def mirror_axes(self) -> Tuple[int, ...]:
        """The spatial axes each network call is mirrored along: :attr:`tta_axes` with ``tta``, else none."""
        return tuple(self.tta_axes) if self.tta else ()

    def describe(self) -> str:
        """Short text, e.g. ``"bf16, overlap 0.5, 2 slabs per call, tta 0-1-2"`` (the defaults are left out)."""
        parts = [self.precision] + ([] if self.channels_last else ["contiguous"])
        parts += [f"overlap {self.overlap:g}"] if self.overlap else []
        parts += [f"{self.sw_batch_size} slabs per call"] if self.sw_batch_size > 1 else []
        parts += [f"tta {tta_text(self.mirror_axes)}"] if self.tta else []
        return ", ".join(parts)


def check_tta_axes(axes) -> Tuple[int, ...]:
    """``axes`` as a tuple of distinct spatial axes, each 0, 1 or 2 (X, Y, Z), at least one.

    Raises:
        OptionError: naming ``--tta-axes``, the rule and the value.
    """
    rule = "must list distinct spatial axes 0, 1 or 2 (X, Y, Z; the slab axis is 2) like 0,1,2"
    if not isinstance(axes, (tuple, list)) or not axes:
        raise OptionError("--tta-axes", rule, axes)
    integral = all(isinstance(a, numbers.Integral) and not isinstance(a, bool) for a in axes)
    if not integral or len(set(axes)) != len(axes) or not all(0 <= a <= 2 for a in axes):
        raise OptionError("--tta-axes", rule, ",".join(map(str, axes)))
    return tuple(int(a) for a in axes)


def tta_text(axes: Tuple[int, ...]) -> str:
    """The results CSV's ``tta`` cell: the mirrored axes like ``0-1-2``, or ``off`` for none.

    Example:
        >>> tta_text((0, 1, 2)), tta_text(())
        ('0-1-2', 'off')
    """
    return "-".join(map(str, axes)) if axes else "off"
