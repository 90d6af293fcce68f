"""The planner's training half: one training step of each stage traced on the ``meta`` device.

It follows :func:`medseg_mem.training.step.train_step` and its levers - precision (autocast emulated with half
weights, float32 master gradients and CPU autocast's float32 max-pool), activation checkpointing, the batch
size, deep supervision (the heads, their outputs and loss terms), the optimizer and DDP - and counts what is held
through the whole step (weights, the optimizer's states, image, label, DDP's buckets).
"""

from __future__ import annotations

from typing import Tuple

from medseg_mem.core.names import OPTIMIZER_STATES
from medseg_mem.memory.meta import autocast_on_meta, backend_transient, countable, meta_networks, weight_bytes
from medseg_mem.memory.planner_validation import trace_validation

ADAM_STATES = OPTIMIZER_STATES["adam"]  # exp_avg and exp_avg_sq, one copy of the weights each
DDP_PARAMETER_COPIES = 1  # DDP's gradient buckets: one float32 copy of the parameters (fitted 0.98-1.00, ddp_bytes)
DDP_FIXED_BYTES = 5_200_000  # besides the buckets: gloo's and the reducer's working memory (fitted 4.3-5.2 MB)


def ddp_bytes(parameter_bytes: int, nproc: int) -> int:
    """Bytes :class:`~torch.nn.parallel.DistributedDataParallel` adds to each rank's training step (0 for one).

    Counted: the reducer's gradient buckets, one float32 copy of the parameters (``parameter_bytes``), and a
    fixed :data:`DDP_FIXED_BYTES`; the number of processes does not change a rank's share. Measured per rank of 2
    gloo processes on CPU against one process at the same batch, peak over 5 steps (``benchmarks/
    bench_ddp_memory.py``, ``benchmarks/results/ddp_memory_cpu.log``), with the network wrapped as ``run``
    wraps it (``gradient_as_bucket_view``): +11.0, +24.9 and +93.3 MB for 5.65, 22.6 and 90.3 MB of parameters
    (widths 8-128 at 1x32^3, 16-256 and the spec 32-512 at 1x64^3); the line through them is 0.98 x parameters
    + 4.3 MB (without bucket views 0.98 x + 5.2 MB; an earlier run 1.00 x + 5.2 MB). The model takes one copy
    of the parameters and the largest constant. Every peak from the third step on holds the buckets (DDP
    rebuilds them after the first step; a new bucket takes memory once written). Where a step's peak comes after
    the backward pass (the spec widths at 1x32^3, every gradient alive) the bucket views save most of the copy:
    +32.8 MB measured, 95.5 MB planned.

    Example:
        >>> ddp_bytes(90_000_000, 1), ddp_bytes(90_000_000, 2) > 90_000_000
        (0, True)
    """
    if nproc <= 1:
        return 0
    return int(DDP_PARAMETER_COPIES * parameter_bytes + DDP_FIXED_BYTES)


def trace_training(variant, shape, classes, model, batch, lever, optimizer: str = "adam", channels_last: bool = False,
                   extra=None, validation: bool = True):  # fmt: skip
    """Trace one training step of each stage and, with ``validation``, its validation pass
    (:mod:`~medseg_mem.memory.planner_validation`, the training state resident); return the worst
    ``(resident bytes, trace, what)``, ``what`` the stage's name (``<name> validation`` for its validation pass),
    worst by the traced peak plus ``extra(stage)`` bytes (e.g. its loader's host memory on a CPU).

    ``lever`` is ``(precision, checkpointing, device, nproc)``: ``nproc`` processes under DDP add
    :func:`ddp_bytes` to each rank's resident bytes; ``optimizer`` (``TrainConfig.optimizer``) sets how many
    weight-sized states are resident; ``channels_last``: the layout, for the CPU backend's temporaries
    (:mod:`~medseg_mem.memory.backend`).
    """
    nets = meta_networks(variant, shape[0], classes, model, lever[1])
    worst = None
    for stage in variant.stages():
        with countable(shape, batch):
            size = _stage_size(stage, shape, model)
            resident, trace = _trace_step(nets[stage.name], batch, size, *lever, OPTIMIZER_STATES[optimizer],
                                          channels_last=channels_last)  # fmt: skip
            phases = [(resident, trace, stage.name)]
            if validation:
                phases.append(_validation(variant, stage, shape, classes, model, lever, channels_last, resident))
        for phase in phases:
            total = phase[0] + phase[1].peak() + (extra(stage) if extra is not None else 0)
            if worst is None or total > worst[3]:
                worst = (*phase, total)
    return worst[:3]


def _validation(variant, stage, shape, classes, model, lever, channels_last, resident: int):
    """``(resident, trace, "<stage> validation")`` of ``stage``'s validation pass: a fresh float32 meta network
    (validation runs without autocast), the training state's ``resident`` bytes held meanwhile."""
    net = meta_networks(variant, shape[0], classes, model, lever[1])[stage.name]
    held, trace = trace_validation(stage, net, shape, classes, model, lever[2], channels_last)
    return resident + held, trace, f"{stage.name} validation"


def _stage_size(stage, shape, model) -> Tuple[int, ...]:
    """Spatial size a training step of ``stage`` sees: its resolution, cut to a slab for slab stages."""
    from medseg_mem.variants.resample import scaled_size

    size = list(scaled_size(shape[1:], stage.factor(model)))
    if stage.slab:
        size[-1] = model.slab_size
    return tuple(size)


def _trace_step(net, batch: int, size: Tuple[int, ...], precision: str, checkpointing: bool, device: str,
                nproc: int = 1, states: int = ADAM_STATES, channels_last: bool = False):  # fmt: skip
    """Trace one training step of ``net`` (one of ``nproc`` DDP ranks) with an optimizer of ``states``
    weight-sized states; return ``(resident bytes, trace)``.

    Traced: everything :func:`~medseg_mem.training.step.train_step` allocates, gradients included (the
    optimizer's step comes after the backward pass, when the activations are gone, and is not traced).
    """
    import torch

    from medseg_mem.memory.trace import LiveSetTracer

    net.train()
    image = torch.zeros((batch, net.in_channels, *size), device="meta")
    label = torch.zeros((batch, 1, *size), dtype=torch.uint8, device="meta")
    resident = _training_resident(net, image, label, precision, checkpointing, nproc, states)
    master_grads = []  # keeps the float32 gradients alive, as the float32 weights' .grad would
    if precision != "fp32":
        autocast_on_meta(net, precision, device, master_grads)
    existing = [image, label, *net.parameters(), *net.buffers()]
    transient = backend_transient(device, channels_last)
    with torch.enable_grad(), LiveSetTracer(existing, all_inside=True, transient=transient) as tracer:
        _step_on_meta(net, image, label)
    return resident, tracer.trace


def _training_resident(net, image, label, precision: str, checkpointing: bool, nproc: int = 1,
                        states: int = ADAM_STATES) -> int:  # fmt: skip
    """Bytes held through a whole training step of the float32 ``net`` by one of ``nproc`` processes.

    Float32 weights and buffers, the optimizer's ``states`` float32 states (Adam two, SGD one), the float32 image
    and the uint8 label; for
    bf16/fp16 without checkpointing also autocast's half copies of the convolution weights (saved for the
    backward pass; with checkpointing they are dropped when the forward pass ends and recast one level at a
    time during the backward pass); under DDP its buckets (:func:`ddp_bytes`).
    """
    parameters = _parameter_bytes(net)
    resident = weight_bytes({"net": net}) + states * parameters + _nbytes(image) + _nbytes(label)
    resident += ddp_bytes(parameters, nproc)
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


def _step_on_meta(net, image, label) -> None:
    """:func:`~medseg_mem.training.step.train_step` without the optimizer: forward, Dice+CE loss on float32
    logits and the int64 label (on every output of a deep-supervised network), backward."""
    import torch
    from monai.losses import DiceCELoss

    from medseg_mem.models.deep_supervision import DeepSupervisionLoss

    logits, loss_fn = net(image), DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    if isinstance(logits, list):
        loss_fn = DeepSupervisionLoss(loss_fn, outputs=len(logits))
    loss = loss_fn(logits.float() if isinstance(logits, torch.Tensor) else logits, label.long())
    del logits
    loss.backward()
