"""The 3D U-Net of the specification (thesis 2.2.1), with configurable widths and depth.

Each level is a double convolution (Conv3d k3 p1 -> BatchNorm3d momentum 0.1 -> ReLU, twice); the encoder
max-pools, the decoder upsamples with a transposed convolution and concatenates the skip; a 1x1x1 head gives
``out_channels`` logits (softmax is applied by the loss / at prediction time).
Inputs whose spatial size is not divisible by ``2 ** (depth - 1)`` are zero-padded at the end and the output
is cropped back: never silently resized. Without autograd (inference) the same numbers are computed a few
slices at a time, holding about one first-level tensor (:mod:`medseg_mem.models.lean`).

With ``checkpointing=True`` (activation checkpointing, training only) each level runs under
:func:`torch.utils.checkpoint.checkpoint`: an encoder level (max-pool, double conv) and a decoder step
(transposed-conv up-sampling, concatenation with the skip, double conv) keep only their input and output
during the forward pass and are recomputed, one at a time, in the backward pass. The recomputation runs the
BatchNorms forward again; :func:`frozen_running_stats` keeps that from updating their running statistics a
second time, so a checkpointed step is bit-identical to a plain one.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator, List, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from medseg_mem.core.names import DEEP_SUPERVISION_LEVELS
from medseg_mem.models.blocks import pad_amounts
from medseg_mem.models.lean import lean_forward

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


@contextlib.contextmanager
def frozen_running_stats(block: nn.Module) -> Iterator[None]:
    """Stop ``block``'s BatchNorms from updating their running statistics while the context is open.

    Used around the backward-pass recomputation of a checkpointed block: momentum 0 makes the update
    ``running = 1 * running + 0 * batch`` (exact for finite batch statistics), and ``num_batches_tracked``
    is put back afterwards, so the statistics end as if the block had run forward once.

    Example:
        >>> block = double_conv(1, 2)
        >>> with frozen_running_stats(block):
        ...     _ = block(torch.randn(2, 1, 4, 4, 4))
        >>> bool(block[1].running_mean.eq(0).all()), int(block[1].num_batches_tracked)
        (True, 0)
    """
    norms = [m for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(norm.momentum, _counter_copy(norm)) for norm in norms]
    for norm in norms:
        norm.momentum = 0.0
    try:
        yield
    finally:
        for norm, (momentum, count) in zip(norms, saved):
            norm.momentum = momentum
            if count is not None:
                norm.num_batches_tracked.copy_(count)


def _counter_copy(norm: nn.Module):
    """A copy of ``norm.num_batches_tracked`` (``None`` when it does not track running statistics)."""
    count = getattr(norm, "num_batches_tracked", None)
    return None if count is None else count.clone()


def recompute_contexts(block: nn.Module) -> Tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
    """``context_fn`` of :func:`~torch.utils.checkpoint.checkpoint`: plain forward, frozen statistics on recompute."""
    return contextlib.nullcontext(), frozen_running_stats(block)


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
        checkpointing: recompute each level's activations in the backward pass instead of storing them
            (only while training with autograd enabled; inference is unchanged). Saves 40-50 % of a
            step's activation memory for one more forward pass of every level; outputs, gradients and
            BatchNorm statistics are identical.
        deep_supervision: add a 1x1x1 head to each decoder level below the top one; in training mode
            ``forward`` returns the logits of every head, highest resolution first (needs at least 3 levels).

    Raises:
        ValueError: a width list of fewer than 2 positive widths, or deep supervision with fewer than 3 levels.

    Example:
        >>> net = UNet3D(1, 3, channels=(4, 8, 16))
        >>> net(torch.zeros(1, 1, 9, 10, 11)).shape
        torch.Size([1, 3, 9, 10, 11])
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        channels: Sequence[int] = SPEC_CHANNELS,
        momentum: float = 0.1,
        checkpointing: bool = False,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        self.checkpointing = bool(checkpointing)
        self.channels = check_channels(channels)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        widths = (self.in_channels,) + self.channels
        self.encoders = nn.ModuleList(double_conv(w_in, w_out, momentum) for w_in, w_out in zip(widths, widths[1:]))
        self.pool = nn.MaxPool3d(2)
        ups, decoders = [], []
        for deep, shallow in zip(self.channels[:0:-1], self.channels[-2::-1]):
            ups.append(nn.ConvTranspose3d(deep, shallow, kernel_size=2, stride=2))
            decoders.append(double_conv(2 * shallow, shallow, momentum))
        self.ups, self.decoders = nn.ModuleList(ups), nn.ModuleList(decoders)
        self.head = nn.Conv3d(self.channels[0], self.out_channels, kernel_size=1)
        self.deep_supervision = bool(deep_supervision)
        self.aux_heads = nn.ModuleList(auxiliary_heads(self.channels, self.out_channels) if deep_supervision else [])

    @property
    def divisor(self) -> int:
        """Spatial sizes are padded to a multiple of this (one halving per pooling)."""
        return 2 ** (len(self.channels) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | List[torch.Tensor]:
        """Logits ``(B, K, *size)``; with deep supervision in training mode, the list of every head's logits."""
        size = x.shape[2:]
        crop = (..., *(slice(0, s) for s in size))
        supervised = self.deep_supervision and self.training
        if not torch.is_grad_enabled() and not supervised:
            return lean_forward(self, x)[crop]
        x = F.pad(x, pad_amounts(size, self.divisor))
        levels, skips = [], []  # levels: decoder outputs below the top, deepest first (deep supervision only)
        for index, encoder in enumerate(self.encoders):
            x = self._level(encoder, self._encode, index, x)
            skips.append(x)
        for index, (decoder, skip) in enumerate(zip(self.decoders, reversed(skips[:-1]))):
            if supervised and index > 0:
                levels.append(x)  # the output of decoder level index - 1
            x = self._level(decoder, self._decode, index, skip, x)
        x = self.head(x)[crop]
        if not supervised:
            return x
        return [x] + [self._auxiliary(index, level, size) for index, level in reversed(list(enumerate(levels)))]

    def _auxiliary(self, index: int, level: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Logits of auxiliary head ``index`` (deepest first) on its decoder level, cropped to ``ceil(size / f)``
        for the level's downsampling factor ``f``."""
        factor = 2 ** (len(self.aux_heads) - index)
        return self.aux_heads[index](level)[(..., *(slice(0, -(-s // factor)) for s in size))]

    def _encode(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Encoder level ``index``: max-pool (below the first level), then the double convolution."""
        if index > 0:
            x = self.pool(x)
        return self.encoders[index](x)

    def _decode(self, index: int, skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Decoder step ``index``: up-sample ``x``, concatenate it after ``skip``, double convolution."""
        return self.decoders[index](torch.cat([skip, self.ups[index](x)], dim=1))

    def _level(self, block: nn.Module, function: Callable, index: int, *tensors: torch.Tensor) -> torch.Tensor:
        """Run ``function(index, *tensors)``, checkpointed when training with checkpointing and autograd on."""
        if not (self.checkpointing and self.training and torch.is_grad_enabled()):
            return function(index, *tensors)
        contexts = functools.partial(recompute_contexts, block)
        return checkpoint(function, index, *tensors, use_reentrant=False, context_fn=contexts)


def auxiliary_heads(channels: Sequence[int], out_channels: int) -> List[nn.Module]:
    """One 1x1x1 head per decoder level below the top one, deepest first (widths ``channels[-2]..channels[1]``).

    Raises:
        ValueError: fewer than :data:`DEEP_SUPERVISION_LEVELS` levels (no decoder level below the top).
    """
    if len(channels) < DEEP_SUPERVISION_LEVELS:
        raise ValueError(f"deep supervision needs at least {DEEP_SUPERVISION_LEVELS} levels (a decoder level below "
                         f"the top to supervise); got channels {tuple(channels)}")  # fmt: skip
    return [nn.Conv3d(width, out_channels, kernel_size=1) for width in channels[-2:0:-1]]
