"""One optimisation step and its learning rate, shared by the training loop and the memory benchmark."""

from __future__ import annotations

from typing import Optional

import torch

from medseg_mem.core.precision import autocast

POLY_EXPONENT = 0.9


def learning_rate(base: float, schedule: str, step: int, steps: int, spent: float = 0.0) -> float:
    """The learning rate of step ``step`` (0-based) of ``steps``: ``base``, or nnU-Net's polynomial decay.

    Args:
        spent: under a time limit, the fraction of the stage's time already spent: the decay then runs over the
            larger of it and ``step / steps``, so it reaches its end whichever limit comes first.

    Example:
        >>> learning_rate(1e-2, "poly", 0, 100), round(learning_rate(1e-2, "poly", 50, 100), 5)
        (0.01, 0.00536)
        >>> round(learning_rate(1e-2, "poly", 10, 100, spent=0.5), 5)  # half the time spent at step 10
        0.00536
    """
    if schedule == "constant":
        return base
    return base * (1 - min(1.0, max(step / steps, spent))) ** POLY_EXPONENT


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


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
        loss_fn: maps ``(logits float32, label (B, 1, ...) int64)`` to a scalar; for a deep-supervised network,
            whose training output is a list of logits, ``(that list, label)`` (it casts each output itself:
            :class:`~medseg_mem.models.deep_supervision.DeepSupervisionLoss`).
        x: input batch ``(B, C, X, Y, Z)`` float32.
        y: label batch ``(B, 1, X, Y, Z)``, any integer dtype (uint8 from the loader); made int64 here only.
        precision: ``fp32``, ``bf16`` or ``fp16``.
        scaler: the gradient scaler for ``fp16`` (see :func:`~medseg_mem.core.precision.grad_scaler`).

    Returns:
        the loss, detached.
    """
    optimizer.zero_grad(set_to_none=True)
    with autocast(precision, x.device):
        logits = net(x)
    loss = loss_fn(logits.float() if isinstance(logits, torch.Tensor) else logits, y.long())
    del logits
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return loss.detach()
