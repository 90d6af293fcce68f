"""The planner's meta-device toolkit: random-free ``meta`` U-Nets per stage, autocast emulated on them (autocast
cannot run on ``meta``), the CPU backend's temporaries for the tracer, and the guard that turns sizes beyond what
torch can count into a one-line answer. The inference trace (:mod:`~medseg_mem.memory.planner_trace`), the training
trace (:mod:`~medseg_mem.memory.planner_training`) and its validation phase
(:mod:`~medseg_mem.memory.planner_validation`) share it.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator, List, Sequence

from medseg_mem.core.errors import OptionError
from medseg_mem.core.units import format_bytes

FLOAT_BYTES = 4
LARGEST_BYTES = 2**63 - 1  # torch counts a storage's bytes in a signed 64-bit integer
HALF_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def meta_networks(variant, image_channels: int, classes: int, model, checkpointing: bool = False):
    """One random-free ``meta`` U-Net per stage (with ``model``'s deep-supervision heads), keyed by stage name."""
    import torch

    from medseg_mem.models.unet import UNet3D

    with torch.device("meta"):
        return {
            stage.name: UNet3D(stage.in_channels(image_channels, classes, model), classes, model.channels,
                               checkpointing=checkpointing, deep_supervision=model.deep_supervision)
            for stage in variant.stages()
        }  # fmt: skip


def weight_bytes(nets) -> int:
    """Bytes of the parameters and buffers of every network in the mapping ``nets``."""
    return sum(t.numel() * t.element_size() for net in nets.values() for t in (*net.parameters(), *net.buffers()))


def backend_transient(device: str, channels_last: bool):
    """The tracer's ``transient`` for ``device``: the CPU backend's temporaries (:mod:`medseg_mem.memory.backend`),
    none on CUDA."""
    if str(device).startswith("cuda"):
        return None
    from medseg_mem.memory.backend import cpu_transient

    return cpu_transient(channels_last)


def check_countable(shape: Sequence[int], batch: int, widest: int) -> None:
    """Refuse, in one line, a plan whose ``widest``-channel float tensors would exceed what torch can count.

    Raises:
        OptionError: naming ``--shape``/``--batch``, the memory the input alone needs and the fix.
    """
    voxels = int(shape[1]) * int(shape[2]) * int(shape[3])
    if int(batch) * voxels * max(int(widest), int(shape[0])) * 8 > LARGEST_BYTES:
        _too_large(shape, batch)


@contextlib.contextmanager
def countable(shape: Sequence[int], batch: int) -> Iterator[None]:
    """Turn torch's size-overflow errors inside the block into :func:`check_countable`'s one-line answer."""
    try:
        yield
    except RuntimeError as error:
        if "overflow" not in str(error).lower():
            raise
        _too_large(shape, batch)


def _too_large(shape: Sequence[int], batch: int) -> None:
    """Raise the one-line "fits no device" answer for ``shape`` and ``batch``."""
    size = ",".join(str(s) for s in shape)
    need = format_bytes(int(batch) * int(shape[0]) * int(shape[1]) * int(shape[2]) * int(shape[3]) * FLOAT_BYTES)
    rule = (f"with --batch {batch} needs tensors near or over 9.2 EB, more than torch can count (the input alone "
            f"is {need}); it fits no device: give a smaller --shape or --batch")  # fmt: skip
    raise OptionError("--shape", rule, size)


def autocast_on_meta(net, precision: str, device: str, master_grads: List = None, pool_fp32: bool = True) -> None:
    """Make ``net`` compute as under ``torch.autocast(device, precision)``, which cannot run on ``meta``.

    The weights are converted to the half dtype (autocast's weight copies; their bytes are counted by
    :func:`_training_resident`, not traced), each convolution casts its input
    to it (so the float32 input is padded, and stored by a checkpointed first level, in float32 as under
    autocast), gradients are replaced by float32 master gradients as they arrive, and on CPU the max-pool runs
    in float32 (CPU autocast's policy: its input is upcast and kept for backward, its output cast back) unless
    ``pool_fp32`` is off (the lean inference pass pools in the half dtype: :func:`medseg_mem.models.blocks.pooled`).
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
