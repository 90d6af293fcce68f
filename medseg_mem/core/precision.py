"""Precision: autocast to bf16/fp16 around network passes, a gradient scaler for fp16 training, half weights for
inference.

Training: weights, gradients and optimizer states stay float32 (the master copy); only activations are kept in
the lower precision. The loss is computed in float32 on the upcast logits, as nnU-Net and MONAI's AMP recipes do.

Inference: only the network passes are autocast (:func:`with_precision`); what the variants do around them
(softmax of stage 1, trilinear guidance, argmax, blending) stays float32, as in an fp32 run. A network loaded for
inference at a half precision keeps its convolutions' weights in that dtype (:func:`half_convolutions`): autocast
would cast them to it anyway, and keeps each cast copy for as long as it runs, next to the float32 weights (1.5x
the half bytes in all).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Optional

import torch
from torch import nn

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device: torch.device) -> ContextManager:
    """``torch.autocast`` for ``bf16``/``fp16`` on ``device``; a no-op context for ``fp32``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> Optional["torch.amp.GradScaler"]:
    """A gradient scaler for ``fp16`` (small gradients underflow in half precision); ``None`` otherwise."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


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


def half_convolutions(net: nn.Module, precision: str) -> nn.Module:
    """Store ``net``'s convolution weights and biases in ``precision``'s half dtype (in place; returns ``net``);
    ``fp32`` leaves it as it is. BatchNorm parameters stay float32, as autocast leaves them.

    Run under :func:`with_precision`, the network computes the same numbers as with float32 weights: autocast
    rounds each weight to the half dtype the same way, per call. For inference only: an optimizer must not step
    these weights.

    Example:
        >>> net = half_convolutions(torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1), torch.nn.BatchNorm3d(2)), "bf16")
        >>> net[0].weight.dtype, net[1].weight.dtype
        (torch.bfloat16, torch.float32)
    """
    if precision == "fp32":
        return net
    for module in net.modules():
        if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
            module.to(DTYPES[precision])
    return net
