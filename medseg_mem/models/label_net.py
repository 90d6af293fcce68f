"""The bundle's ``network_def``: the spec U-Net returning a uint8 label map, in a form TorchScript can compile.

:class:`LabelUNet3D` has exactly :class:`~medseg_mem.models.unet.UNet3D`'s layers and ``state_dict`` (a stage's
``best.pt`` weights load into it unchanged) and the same logits (:meth:`LabelUNet3D.logits`), but ``forward``
returns their argmax as ``(B, 1, X, Y, Z)`` uint8, which is what a MONAI bundle's metadata declares
(``format: labels``, one channel). The argmax is per voxel, so slab-wise labels equal the labels of slab-wise
logits. ``forward`` avoids activation checkpointing and Python-only helpers, so ``torch.jit.script`` (MONAI's
``ckpt_export``) compiles it; spatial sizes are padded and cropped back as in ``UNet3D``.
"""

from __future__ import annotations

from typing import List

import torch
from torch.nn import functional as F

from medseg_mem.models.unet import UNet3D


class LabelUNet3D(UNet3D):
    """:class:`UNet3D` whose output is the uint8 class index of every voxel.

    Args:
        in_channels: image channels (plus guidance channels for a cascade's second stage).
        out_channels: classes, background included (at most 256: the labels are uint8).
        channels: width of each level, as the trained stage's (``best.pt`` ``model.channels``).

    Raises:
        ValueError: more than 256 classes, or a width list ``UNet3D`` refuses.

    Example:
        >>> net = LabelUNet3D(1, 3, channels=(2, 4)).eval()
        >>> out = net(torch.zeros(1, 1, 5, 6, 7))
        >>> tuple(out.shape), out.dtype
        ((1, 1, 5, 6, 7), torch.uint8)
    """

    __jit_unused_properties__ = ["divisor"]

    def __init__(self, in_channels: int = 1, out_channels: int = 2, channels=(32, 64, 128, 256, 512)) -> None:
        if int(out_channels) > 256:
            raise ValueError(f"out_channels must be at most 256 for uint8 labels; got {out_channels}")
        super().__init__(in_channels, out_channels, channels=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x).argmax(dim=1, keepdim=True).to(torch.uint8)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The ``(B, K, X, Y, Z)`` logits, identical to ``UNet3D.forward`` in eval mode."""
        size = x.shape[2:]
        x = F.pad(x, _pads(size, 1 << (len(self.encoders) - 1)))
        skips: List[torch.Tensor] = []
        for index, encoder in enumerate(self.encoders):
            x = encoder(x if index == 0 else self.pool(x))
            skips.append(x)
        for index, (up, decoder) in enumerate(zip(self.ups, self.decoders)):
            x = decoder(torch.cat([skips[len(skips) - 2 - index], up(x)], dim=1))
        return self.head(x)[:, :, : size[0], : size[1], : size[2]]


def _pads(size: List[int], divisor: int) -> List[int]:
    """``F.pad`` amounts (last axis first) padding each axis at its end to a multiple of ``divisor``."""
    amounts: List[int] = []
    for axis in range(len(size) - 1, -1, -1):
        amounts += [0, (divisor - size[axis] % divisor) % divisor]
    return amounts
