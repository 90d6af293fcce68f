"""Geometry both U-Net passes share: padding a volume to the U-Net's divisor, and max-pooling in the input's dtype.

:class:`~medseg_mem.models.unet.UNet3D`'s pass and the lean inference pass (:mod:`~medseg_mem.models.lean`) import
them from here, so neither imports the other's private helpers.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import nn


def pooled(pool: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``pool(x)`` in ``x``'s own dtype even under autocast.

    CPU autocast runs max-pooling in float32: a bf16 input is copied to float32 (twice its bytes, the largest
    tensor of a bf16 pass) and the output stays float32. The maximum of bf16 values is the same bf16 value
    either way, and the next convolution casts its input to bf16 anyway, so the numbers are unchanged.
    """
    if x.device.type not in ("cpu", "cuda"):  # the planner's meta tensors: no autocast to turn off
        return pool(x)
    with torch.autocast(device_type=x.device.type, enabled=False):
        return pool(x)


def pad_amounts(size: Sequence[int], divisor: int) -> Tuple[int, ...]:
    """``F.pad`` amounts (last axis first) that pad each spatial axis at its end up to a multiple of ``divisor``."""
    amounts = []
    for s in reversed(tuple(size)):
        amounts += [0, (-int(s)) % divisor]
    return tuple(amounts)
