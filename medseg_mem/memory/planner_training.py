"""The planner's training half: one training step of each stage traced on the ``meta`` device.

It follows :func:`medseg_mem.training.step.train_step` and its levers - precision (autocast emulated with half
weights, float32 master gradients and CPU autocast's float32 max-pool), activation checkpointing and the batch
size - and counts what is held through the whole step (weights, the optimizer's states, image, label).
"""

from __future__ import annotations

import functools
from typing import List, Tuple

from medseg_mem.memory.planner_trace import countable, meta_networks, weight_bytes
from medseg_mem.training.optimizer import optimizer_states

ADAM_STATES = optimizer_states("adam")  # exp_avg and exp_avg_sq, one copy of the weights each
HALF_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def trace_training(variant, shape, classes, model, batch, lever, optimizer: str = "adam"):
    """Trace one training step of each stage; return the worst stage's ``(resident bytes, trace)``.

    ``lever`` is ``(precision, checkpointing, device)``; ``optimizer`` (``TrainConfig.optimizer``) sets how many
    weight-sized states are resident.
    """
    nets = meta_networks(variant, shape[0], classes, model, lever[1])
    worst = None
    for stage in variant.stages():
        with countable(shape, batch):
            size = _stage_size(stage, shape, model)
            resident, trace = _trace_step(nets[stage.name], batch, size, *lever, optimizer_states(optimizer))
        if worst is None or resident + trace.peak() > worst[0] + worst[1].peak():
            worst = (resident, trace)
    return worst


def _stage_size(stage, shape, model) -> Tuple[int, ...]:
    """Spatial size a training step of ``stage`` sees: its resolution, cut to a slab for slab stages."""
    from medseg_mem.resample import scaled_size

    size = list(scaled_size(shape[1:], stage.factor(model)))
    if stage.slab:
        size[-1] = model.slab_size
    return tuple(size)


def _trace_step(net, batch: int, size: Tuple[int, ...], precision: str, checkpointing: bool, device: str,
                states: int = ADAM_STATES):  # fmt: skip
    """Trace one training step of ``net`` with an optimizer of ``states`` weight-sized states; return
    ``(resident bytes, trace)``.

    Traced: everything :func:`~medseg_mem.training.step.train_step` allocates, gradients included (the
    optimizer's step comes after the backward pass, when the activations are gone, and is not traced).
    """
    import torch

    from medseg_mem.memory.trace import LiveSetTracer

    net.train()
    image = torch.zeros((batch, net.in_channels, *size), device="meta")
    label = torch.zeros((batch, 1, *size), dtype=torch.uint8, device="meta")
    resident = _training_resident(net, image, label, precision, checkpointing, states)
    master_grads = []  # keeps the float32 gradients alive, as the float32 weights' .grad would
    if precision != "fp32":
        autocast_on_meta(net, precision, device, master_grads)
    existing = [image, label, *net.parameters(), *net.buffers()]
    with torch.enable_grad(), LiveSetTracer(existing, all_inside=True) as tracer:
        _step_on_meta(net, image, label)
    return resident, tracer.trace


def _training_resident(net, image, label, precision: str, checkpointing: bool, states: int = ADAM_STATES) -> int:
    """Bytes held through a whole training step of the float32 ``net``.

    Float32 weights and buffers, the optimizer's ``states`` float32 states (Adam two, SGD one), the float32 image
    and the uint8 label; for
    bf16/fp16 without checkpointing also autocast's half copies of the convolution weights (saved for the
    backward pass; with checkpointing they are dropped when the forward pass ends and recast one level at a
    time during the backward pass).
    """
    resident = weight_bytes({"net": net}) + states * _parameter_bytes(net) + _nbytes(image) + _nbytes(label)
    if precision != "fp32" and not checkpointing:
        resident += _convweight_bytes(net) // 2
    return resident


def _convweight_bytes(net) -> int:
    """Float32 bytes of the (transposed) convolutions' weights and biases: what autocast casts."""
    import torch

    convs = [m for m in net.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    return sum(_nbytes(p) for conv in convs for p in conv.parameters())


def _parameter_bytes(net) -> int:
    """Bytes of ``net``'s parameters: the size of one optimizer state."""
    return sum(_nbytes(p) for p in net.parameters())


def _nbytes(tensor) -> int:
    return tensor.numel() * tensor.element_size()


def autocast_on_meta(net, precision: str, device: str, master_grads: List = None, pool_fp32: bool = True) -> None:
    """Make ``net`` compute as under ``torch.autocast(device, precision)``, which cannot run on ``meta``.

    The weights are converted to the half dtype (autocast's weight copies; their bytes are counted by
    :func:`_training_resident`, not traced), each convolution casts its input
    to it (so the float32 input is padded, and stored by a checkpointed first level, in float32 as under
    autocast), gradients are replaced by float32 master gradients as they arrive, and on CPU the max-pool runs
    in float32 (CPU autocast's policy: its input is upcast and kept for backward, its output cast back) unless
    ``pool_fp32`` is off (the lean inference pass pools in the half dtype: :func:`medseg_mem.models.unet._pooled`).
    ``master_grads=None`` (inference) registers no gradient hooks.
    """
    import torch

    dtype = getattr(torch, HALF_DTYPES[precision])
    for parameter in net.parameters() if master_grads is not None else ():
        parameter.register_post_accumulate_grad_hook(functools.partial(_master_grad, master_grads))
    net.to(dtype)
    for conv in (m for m in net.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))):
        conv.register_forward_pre_hook(lambda module, args: (args[0].to(dtype),))
    if pool_fp32 and not str(device).startswith("cuda"):
        net.pool.register_forward_pre_hook(lambda module, args: (args[0].float(),))
        net.pool.register_forward_hook(lambda module, args, output: output.to(dtype))


def _master_grad(kept: List, parameter) -> None:
    """Replace a half gradient by the float32 one autocast accumulates into the float32 weights."""
    import torch

    kept.append(torch.empty(parameter.shape, dtype=torch.float32, device=parameter.device))
    parameter.grad = None


def _step_on_meta(net, image, label) -> None:
    """:func:`~medseg_mem.training.step.train_step` without the optimizer: forward, Dice+CE loss on float32
    logits and the int64 label, backward."""
    from monai.losses import DiceCELoss

    logits = net(image)
    loss = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)(logits.float(), label.long())
    del logits
    loss.backward()
