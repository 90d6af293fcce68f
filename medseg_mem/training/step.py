"""One optimisation step, shared by the training loop, the memory benchmark and the planner's checks."""

from __future__ import annotations

from typing import Optional

import torch

from medseg_mem.training.precision import autocast


def train_step(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    precision: str = "fp32",
    scaler: Optional["torch.amp.GradScaler"] = None,
) -> torch.Tensor:
    """Forward under ``precision``'s autocast, float32 loss, backward (scaled for fp16) and optimizer step.

    Args:
        net: the network, in training mode, on ``x``'s device.
        optimizer: over ``net``'s parameters.
        loss_fn: maps ``(logits float32, label (B, 1, ...) int64)`` to a scalar.
        x: input batch ``(B, C, X, Y, Z)`` float32.
        y: label batch ``(B, 1, X, Y, Z)``, any integer dtype (uint8 from the loader); made int64 here only.
        precision: ``fp32``, ``bf16`` or ``fp16``.
        scaler: the gradient scaler for ``fp16`` (see :func:`~medseg_mem.training.precision.grad_scaler`).

    Returns:
        the loss, detached.
    """
    optimizer.zero_grad(set_to_none=True)
    with autocast(precision, x.device):
        logits = net(x)
    loss = loss_fn(logits.float(), y.long())
    del logits
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return loss.detach()
