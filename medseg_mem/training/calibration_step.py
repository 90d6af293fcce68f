"""The training step the planner's training calibrations measure: :func:`train_step` of a random-weight U-Net.

It lives here, with the training step, and is handed to :func:`medseg_mem.memory.calibration.calibrate`
(``training_setup``): the memory layer measures it without importing the training layer.
"""

from __future__ import annotations

from typing import Callable, Tuple


def training_setup(
    shape: Tuple[int, ...], out_channels: int, channels: Tuple[int, ...], device: str, precision: str = "fp32",
    checkpointing: bool = False, channels_last: bool = False,
) -> Callable:  # fmt: skip
    """Picklable :func:`~medseg_mem.memory.measure.measure_peak` setup (``grad=True``): one training step.

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
    from medseg_mem.core.precision import grad_scaler
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
