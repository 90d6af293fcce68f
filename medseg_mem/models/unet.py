"""The 3D U-Net of the specification (thesis 2.2.1), with configurable widths and depth.

Each level is a double convolution (Conv3d k3 p1 -> BatchNorm3d momentum 0.1 -> ReLU, twice); the encoder
max-pools, the decoder upsamples with a transposed convolution and concatenates the skip; a 1x1x1 head gives
``out_channels`` logits (softmax is applied by the loss / at prediction time).
Inputs whose spatial size is not divisible by ``2 ** (depth - 1)`` are zero-padded at the end and the output
is cropped back: never silently resized.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

SPEC_CHANNELS: Tuple[int, ...] = (32, 64, 128, 256, 512)


def double_conv(in_channels: int, out_channels: int, momentum: float = 0.1) -> nn.Sequential:
    """Two (Conv3d k3 p1 -> BatchNorm3d -> ReLU) blocks."""
    layers = []
    for channels_in in (in_channels, out_channels):
        layers += [
            nn.Conv3d(channels_in, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm3d(out_channels, momentum=momentum),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


def check_channels(channels: Sequence[int]) -> Tuple[int, ...]:
    """Validate a width list: at least two levels, all positive integers."""
    channels = tuple(int(c) for c in channels)
    if len(channels) < 2 or min(channels) < 1:
        raise ValueError(f"channels must list at least 2 positive widths, one per level; got {channels}")
    return channels


class UNet3D(nn.Module):
    """The spec 3D U-Net.

    Args:
        in_channels: image channels (plus guidance channels for a cascade's second stage).
        out_channels: classes, background included.
        channels: width of each level; ``len(channels)`` is the depth (spec: 32, 64, 128, 256, 512).
        momentum: BatchNorm momentum (spec: 0.1).

    Example:
        >>> net = UNet3D(1, 3, channels=(4, 8, 16))
        >>> net(torch.zeros(1, 1, 9, 10, 11)).shape
        torch.Size([1, 3, 9, 10, 11])
    """

    def __init__(
        self, in_channels: int = 1, out_channels: int = 2, channels: Sequence[int] = SPEC_CHANNELS, momentum: float = 0.1
    ) -> None:
        super().__init__()
        self.channels = check_channels(channels)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        widths = (self.in_channels,) + self.channels
        self.encoders = nn.ModuleList(double_conv(widths[i], widths[i + 1], momentum) for i in range(len(self.channels)))
        self.pool = nn.MaxPool3d(2)
        ups, decoders = [], []
        for deep, shallow in zip(self.channels[:0:-1], self.channels[-2::-1]):
            ups.append(nn.ConvTranspose3d(deep, shallow, kernel_size=2, stride=2))
            decoders.append(double_conv(2 * shallow, shallow, momentum))
        self.ups, self.decoders = nn.ModuleList(ups), nn.ModuleList(decoders)
        self.head = nn.Conv3d(self.channels[0], self.out_channels, kernel_size=1)

    @property
    def divisor(self) -> int:
        """Spatial sizes are padded to a multiple of this (one halving per pooling)."""
        return 2 ** (len(self.channels) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        x = F.pad(x, pad_amounts(size, self.divisor))
        skips = []
        for index, encoder in enumerate(self.encoders):
            x = encoder(x)
            if index < len(self.encoders) - 1:
                skips.append(x)
                x = self.pool(x)
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips)):
            x = decoder(torch.cat([skip, up(x)], dim=1))
        x = self.head(x)
        return x[(..., *(slice(0, s) for s in size))]


def pad_amounts(size: Sequence[int], divisor: int) -> Tuple[int, ...]:
    """``F.pad`` amounts (last axis first) that pad each spatial axis at its end up to a multiple of ``divisor``."""
    amounts = []
    for s in reversed(tuple(size)):
        amounts += [0, (-int(s)) % divisor]
    return tuple(amounts)
