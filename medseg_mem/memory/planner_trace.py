"""The planner's meta-device tracing: meta U-Nets per stage, a variant's ``segment`` under a live-set tracer, and
the guard that turns sizes beyond what torch can count into a one-line answer.

The slab loop is traced with :func:`~medseg_mem.inference.slab.representative_slabs`: only the slab groups
whose memory can differ run, so planning takes the same time for 4 slabs or 40,000 and predicts the same peak.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

from medseg_mem.core.errors import OptionError
from medseg_mem.core.units import format_bytes

FLOAT_BYTES = 4
LARGEST_BYTES = 2**63 - 1  # torch counts a storage's bytes in a signed 64-bit integer


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


def trace_inference(variant, shape, classes, model, batch, inference=None, device: str = "cpu"):
    """Trace ``variant.segment`` on ``meta`` under inference mode; returns ``(resident bytes, trace)``.

    ``inference`` (:class:`~medseg_mem.core.config.InferenceConfig`) sets the slab batch and overlap, traced as they
    run, and the precision: autocast cannot run on ``meta``, so the networks compute in the half dtype as under
    autocast (:func:`~medseg_mem.memory.planner_training.autocast_on_meta`). Resident: the weights (half at a
    half precision, as :func:`~medseg_mem.models.build.load_networks` loads them) and the float32 input.
    """
    import dataclasses

    import torch

    from medseg_mem.core.config import InferenceConfig
    from medseg_mem.inference.slab import representative_slabs
    from medseg_mem.memory.planner_training import autocast_on_meta
    from medseg_mem.memory.trace import LiveSetTracer

    inference = inference or InferenceConfig()
    nets = {name: net.eval() for name, net in meta_networks(variant, shape[0], classes, model).items()}
    for net in nets.values() if inference.precision != "fp32" else ():
        autocast_on_meta(net, inference.precision, device, pool_fp32=False)  # models.unet._pooled
    resident = weight_bytes(nets)  # half weights at a half precision (inference.precision.half_convolutions)
    on_meta = dataclasses.replace(inference, precision="fp32")  # the half networks stand for autocast
    with countable(shape, batch):
        image = torch.zeros((batch, *shape), device="meta")
        existing = [image, *(t for net in nets.values() for t in (*net.parameters(), *net.buffers()))]
        transient = backend_transient(device, inference.channels_last)
        with torch.inference_mode(), representative_slabs(), \
                LiveSetTracer(existing, nets.values(), transient=transient) as tracer:  # fmt: skip
            variant.segment(nets, image, model, classes, inference=on_meta)
    return resident + image.numel() * FLOAT_BYTES, tracer.trace


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
