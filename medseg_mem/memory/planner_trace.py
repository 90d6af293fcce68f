"""The planner's inference trace: a variant's ``segment`` on ``meta`` U-Nets (:mod:`~medseg_mem.memory.meta`) under a
live-set tracer.

The slab loop is traced with :func:`~medseg_mem.inference.slab.representative_slabs`: only the slab groups
whose memory can differ run, so planning takes the same time for 4 slabs or 40,000 and predicts the same peak.
"""

from __future__ import annotations

from medseg_mem.memory.meta import (
    FLOAT_BYTES,
    autocast_on_meta,
    backend_transient,
    countable,
    meta_networks,
    weight_bytes,
)


def trace_inference(variant, shape, classes, model, batch, inference=None, device: str = "cpu"):
    """Trace ``variant.segment`` on ``meta`` under inference mode; returns ``(resident bytes, trace)``.

    ``inference`` (:class:`~medseg_mem.core.config.InferenceConfig`) sets the slab batch and overlap, traced as they
    run, and the precision: autocast cannot run on ``meta``, so the networks compute in the half dtype as under
    autocast (:func:`~medseg_mem.memory.meta.autocast_on_meta`). Resident: the weights (half at a
    half precision, as :func:`~medseg_mem.models.build.load_networks` loads them) and the float32 input.
    """
    import dataclasses

    import torch

    from medseg_mem.core.config import InferenceConfig
    from medseg_mem.inference.slab import representative_slabs
    from medseg_mem.memory.trace import LiveSetTracer

    inference = inference or InferenceConfig()
    nets = {name: net.eval() for name, net in meta_networks(variant, shape[0], classes, model).items()}
    for net in nets.values() if inference.precision != "fp32" else ():
        autocast_on_meta(net, inference.precision, device, pool_fp32=False)  # models.blocks.pooled
    resident = weight_bytes(nets)  # half weights at a half precision (core.precision.half_convolutions)
    on_meta = dataclasses.replace(inference, precision="fp32")  # the half networks stand for autocast
    with countable(shape, batch):
        image = torch.zeros((batch, *shape), device="meta")
        existing = [image, *(t for net in nets.values() for t in (*net.parameters(), *net.buffers()))]
        transient = backend_transient(device, inference.channels_last)
        with torch.inference_mode(), representative_slabs(), \
                LiveSetTracer(existing, nets.values(), transient=transient) as tracer:  # fmt: skip
            variant.segment(nets, image, model, classes, inference=on_meta)
    return resident + image.numel() * FLOAT_BYTES, tracer.trace
