"""Inference precision: a network call wrapped in ``torch.autocast`` to bf16 or fp16.

Only the network passes are autocast; what the variants do around them (softmax of stage 1, trilinear
guidance, argmax, blending) stays float32, as in an fp32 run. The weights stay float32 in memory: autocast
casts each convolution's weights per call, a copy that lives for that call only under inference mode.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from medseg_mem.training.precision import autocast


def with_precision(network: Callable[..., torch.Tensor], precision: str) -> Callable[..., torch.Tensor]:
    """``network`` itself for ``fp32``; else a callable that runs it under autocast on its input's device.

    Example:
        >>> net = torch.nn.Conv3d(1, 2, 1)
        >>> with_precision(net, "bf16")(torch.zeros(1, 1, 2, 2, 2)).dtype
        torch.bfloat16
    """
    if precision == "fp32":
        return network

    def autocast_network(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        with autocast(precision, x.device):
            return network(x, *args, **kwargs)

    return autocast_network
