"""Training calibrations: measured training steps of the spec U-Net against the planner's training trace.

One calibration per precision, checkpointing and layout setting (:func:`calibrate_training`), fitted like
the inference one (:func:`~medseg_mem.memory.calibration.fit`) on steps measured with
:func:`~medseg_mem.memory.measure.measure_peak` (``grad=True``) of :func:`training_setup`, the step the
training loop takes. Cached by :func:`~medseg_mem.memory.calibration.cached_calibration` under keys ending in
``|training-<precision>[-checkpointing][-channels-last]``.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence, Tuple

from medseg_mem.memory.calibration import Calibration, Shape, calibration_key, calibration_shapes, fit

TRAINING_TARGET_BYTES = (3e8, 6e8, 1.2e9)


def training_setup(
    shape: Shape, out_channels: int, channels: Tuple[int, ...], device: str, precision: str = "fp32",
    checkpointing: bool = False, channels_last: bool = False,
) -> Callable:
    """Picklable :func:`measure_peak` setup (``grad=True``): one training step of a random-weight U-Net.

    The step is :func:`~medseg_mem.training.step.train_step` (autocast for bf16/fp16, Dice+CE loss on float32
    logits, backward, Adam step) on a random float32 batch of ``shape`` ``(B, C, X, Y, Z)`` and a uint8 label,
    as the loader delivers them. The Adam states already exist (:func:`prime_optimizer`), as in every step
    after the first, and no gradients are held before the step (``zero_grad(set_to_none=True)``). With
    ``channels_last`` the network is laid out as the training loop lays it out (``build_network``).
    """
    import torch
    from monai.losses import DiceCELoss

    from medseg_mem.models.build import channels_last_layout
    from medseg_mem.models.unet import UNet3D
    from medseg_mem.training.precision import grad_scaler
    from medseg_mem.training.step import train_step

    torch.manual_seed(0)
    where = torch.device(device)
    net = UNet3D(shape[1], out_channels, channels, checkpointing=checkpointing).train().to(where)
    net = channels_last_layout(net) if channels_last else net
    optimizer = prime_optimizer(torch.optim.Adam(net.parameters(), lr=3e-4))
    image = torch.randn(shape, device=where)
    label = torch.randint(0, out_channels, (shape[0], 1, *shape[2:]), dtype=torch.uint8, device=where)
    loss, scaler = DiceCELoss(to_onehot_y=True, softmax=True, batch=True), grad_scaler(precision, where)
    return lambda: train_step(net, optimizer, loss, image, label, precision, scaler)


def prime_optimizer(optimizer):
    """Create ``optimizer``'s states with one step on zero gradients, then drop the gradients; return it.

    For Adam a zero gradient leaves the weights unchanged (the update is ``0 / (0 + eps)``), and the states
    are the optimizer's own (``exp_avg``, ``exp_avg_sq``, ``step``), at a fraction of a real step's cost.
    """
    import torch

    for group in optimizer.param_groups:
        for parameter in group["params"]:
            parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return optimizer


def traced_training_bytes(
    shape: Shape, out_channels: int, channels: Sequence[int], precision: str, checkpointing: bool, device: str
) -> Tuple[int, int]:
    """``(resident, traced)`` bytes the planner counts for :func:`training_setup` at ``shape`` ``(B, C, X, Y, Z)``."""
    from medseg_mem.config import ModelConfig
    from medseg_mem.memory.planner import plan_variant

    plan = plan_variant(
        "full", tuple(shape[1:]), out_channels, ModelConfig(channels=tuple(channels)), batch=shape[0],
        mode="training", precision=precision, checkpointing=checkpointing, cache_bytes=0, device=device,
    )  # fmt: skip
    return plan.resident_bytes, plan.traced_bytes


def calibrate_training(
    channels: Sequence[int], device: str = "cpu", precision: str = "fp32", checkpointing: bool = False,
    shapes: Optional[Sequence[Shape]] = None, out_channels: int = 2, channels_last: bool = False,
) -> Calibration:
    """Measure training steps (:func:`training_setup`) at ``shapes`` and fit the training correction.

    Args:
        channels: U-Net widths; the calibration is only valid for these.
        device: ``"cpu"`` or ``"cuda"``; each step is measured with ``measure_peak(..., grad=True)``.
        precision: ``fp32``, ``bf16`` or ``fp16``; the calibration is only valid for it.
        checkpointing: activation checkpointing on or off; the calibration is only valid for it.
        shapes: ``(B, C, X, Y, Z)`` batch shapes (default: cubes whose traced step is about 0.3, 0.6, 1.2 GB).
        out_channels: classes of the calibration networks.
        channels_last: the network's memory layout (:func:`training_setup`); the calibration is only valid for it.

    Example:
        >>> calibrate_training((4, 8), "cpu", "bf16", True, [(1, 1, 32, 32, 32), (1, 1, 64, 64, 64)])  # doctest: +SKIP
    """
    from medseg_mem.memory.measure import measure_peak

    channels = tuple(int(c) for c in channels)
    levers = (precision, bool(checkpointing), device)
    traced = functools.partial(_traced_step_bytes, out_channels=out_channels, channels=channels, levers=levers)
    points = []
    for shape in shapes or calibration_shapes(channels, TRAINING_TARGET_BYTES, traced, probe=64):
        shape = tuple(int(s) for s in shape)
        setup_args = (shape, out_channels, channels, device, precision, bool(checkpointing), bool(channels_last))
        reading = measure_peak(training_setup, setup_args, device, grad=True)
        resident, traced_bytes = traced_training_bytes(shape, out_channels, channels, *levers)
        points.append((traced_bytes, int(reading.peak_bytes - resident)))
    multiplier, offset = fit(points)
    key = calibration_key(device, channels, "training", precision, checkpointing, channels_last)
    return Calibration(multiplier, int(offset), key, tuple(points))


def _traced_step_bytes(shape: Shape, out_channels: int, channels: Sequence[int], levers: Tuple) -> int:
    """Traced bytes of one training step at ``shape``; ``levers`` is ``(precision, checkpointing, device)``."""
    return traced_training_bytes(shape, out_channels, channels, *levers)[1]
