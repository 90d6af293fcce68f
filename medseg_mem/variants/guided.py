"""The cascade's stage-2 input, image plus guidance, made slab by slab from the small stage-1 output.

The guidance of the whole volume would be ``argmax(trilinear(stage-1 probabilities, full size))``: a
full-resolution K-channel float tensor, an int64 map and the concatenated input. Trilinear interpolation is
separable and PyTorch applies it innermost axis first (the last axis, then the second, then the first), so it
is done here in the same order in two exact steps: once along the last axis only, at stage 1's in-plane size
(``K x x x y x Z``, a fraction ``downsample**2`` of one full-resolution channel per class), then, per slab,
in-plane for that slab's slices only. A size-preserving axis gets weights 1 and 0, so each step performs
exactly the arithmetic of the one-call interpolation: the guidance is bit for bit the whole-volume one.
Validation guides a stage from a label map at stage-1 resolution instead (:class:`LabelGuidedSlabs`), slab by
slab as well.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch.nn import functional as F

from medseg_mem.core.errors import OptionError
from medseg_mem.inference.slab import cut_slab
from medseg_mem.inference.source import SlabSource
from medseg_mem.variants.resample import encode_guidance, guidance_channels, guidance_range, resample_image


def along_last_axis(low: torch.Tensor, depth: int) -> torch.Tensor:
    """First step of the trilinear upsampling: ``low`` ``(B, K, x, y, z)`` resampled to ``(x, y, depth)``."""
    return resample_image(low, (*low.shape[2:4], depth))


def guidance_slices(columns: torch.Tensor, size: Sequence[int], start: int, stop: int, encoding: str,
                    num_classes: int) -> torch.Tensor:  # fmt: skip
    """Encoded guidance of the slices ``[start, stop)`` of a volume of spatial ``size``.

    Args:
        columns: stage-1 probabilities after :func:`along_last_axis` ``(B, K, x, y, Z)``.
        size: the full-resolution spatial size ``(X, Y, Z)``.
        start: first slice (last axis).
        stop: one past the last slice.
        encoding: ``"label"`` or ``"onehot"`` (:func:`~medseg_mem.variants.resample.encode_guidance`).
        num_classes: K.
    """
    part = columns[..., start:stop].contiguous()
    planes = resample_image(part, (*size[:2], stop - start))
    return encode_guidance(planes.argmax(dim=1, keepdim=True), encoding, num_classes)


class GuidedSource(SlabSource):
    """``cat([image, guidance])`` of a whole volume, cut slab by slab along the last axis without being made;
    subclasses make one slab's guidance (:meth:`guide`).

    Args:
        image: full-resolution ``(B, C, X, Y, Z)``.
        encoding: guidance encoding (``ModelConfig.guidance``).
        num_classes: K.
    """

    def __init__(self, image: torch.Tensor, encoding: str, num_classes: int) -> None:
        self.image, self.encoding, self.num_classes = image, encoding, num_classes
        extra = guidance_channels(encoding, num_classes)
        self.shape = (image.shape[0], image.shape[1] + extra, *image.shape[2:])

    def guide(self, start: int, stop: int) -> torch.Tensor:
        """Encoded guidance ``(B, G, X, Y, stop - start)`` of the slices ``[start, stop)``."""
        raise NotImplementedError

    def cut(self, start: int, slab_size: int, axis: int) -> torch.Tensor:
        """Image and guidance of ``slab_size`` slices from ``start``, zero-padded past the end (last axis only).

        Raises:
            OptionError: if ``axis`` is not the last axis.
        """
        if axis % 5 != 4:
            raise OptionError("axis", "must be the last axis (-1 or 4): guidance is made along the last axis", axis)
        image = cut_slab(self.image, start, slab_size, -1)
        stop = min(start + slab_size, self.image.shape[-1])
        guide = F.pad(self.guide(start, stop), [0, slab_size - (stop - start)])
        return torch.cat([image, guide.to(image.device, image.dtype)], dim=1)


class GuidedSlabs(GuidedSource):
    """The cascade's stage-2 input at inference: guidance from stage 1's class probabilities.

    Args:
        image: full-resolution ``(B, C, X, Y, Z)``.
        low_probabilities: stage-1 class probabilities ``(B, K, x, y, z)``.
        encoding: guidance encoding (``ModelConfig.guidance``).
        num_classes: K.

    Example:
        >>> source = GuidedSlabs(torch.zeros(1, 1, 8, 8, 10), torch.rand(1, 3, 4, 4, 5), "label", 3)
        >>> source.shape, tuple(source.cut(8, 4, -1).shape)
        ((1, 2, 8, 8, 10), (1, 2, 8, 8, 4))
    """

    def __init__(self, image: torch.Tensor, low_probabilities: torch.Tensor, encoding: str, num_classes: int) -> None:
        super().__init__(image, encoding, num_classes)
        self.columns = along_last_axis(low_probabilities, image.shape[-1])
        self.offset = 0  # where ``image``'s first slice lies in the volume the columns were made for

    @classmethod
    def chunk(cls, image: torch.Tensor, columns: torch.Tensor, offset: int, encoding: str,
              num_classes: int) -> "GuidedSlabs":  # fmt: skip
        """Stage 2's input for the slices ``[offset, offset + n)`` of a volume that is never whole (out of core):
        ``image`` ``(B, C, X, Y, n)`` is that chunk, ``columns`` (:func:`along_last_axis`) the whole depth's."""
        source = cls.__new__(cls)
        GuidedSource.__init__(source, image, encoding, num_classes)
        source.columns, source.offset = columns, int(offset)
        return source

    def guide(self, start: int, stop: int) -> torch.Tensor:
        first, last = self.offset + start, self.offset + stop
        return guidance_slices(self.columns, self.image.shape[2:], first, last, self.encoding, self.num_classes)


class LabelGuidedSlabs(GuidedSource):
    """A guided stage's validation input: guidance from a label map at stage-1 resolution (the ground truth
    downsampled, or stage 1's prediction), one slab at a time instead of ``G x`` the whole volume.

    Each slab is exactly the whole volume's (:func:`~medseg_mem.variants.resample.guidance_range` computes every output
    slice on its own), so labels made from it equal those made from the concatenated volume.

    Args:
        image: full-resolution ``(B, C, X, Y, Z)``.
        low_label: the label map ``(B, 1, x, y, z)`` at stage-1 resolution.
        encoding: guidance encoding (``ModelConfig.guidance``).
        num_classes: K.

    Example:
        >>> source = LabelGuidedSlabs(torch.zeros(1, 1, 8, 8, 10), torch.ones(1, 1, 4, 4, 5, dtype=torch.uint8),
        ...                           "onehot", 3)
        >>> source.shape, source.cut(8, 4, -1)[0, 1:, 0, 0].tolist()
        ((1, 3, 8, 8, 10), [[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    """

    def __init__(self, image: torch.Tensor, low_label: torch.Tensor, encoding: str, num_classes: int) -> None:
        super().__init__(image, encoding, num_classes)
        self.low_label = low_label

    def guide(self, start: int, stop: int) -> torch.Tensor:
        return guidance_range(self.low_label, self.image.shape[2:], start, stop, self.encoding, self.num_classes)
