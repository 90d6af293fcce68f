"""The planner's inference trace: a variant's segmentation on ``meta`` U-Nets (:mod:`~medseg_mem.memory.meta`) under a
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


def trace_inference(variant, shape, classes, model, batch, inference=None, device: str = "cpu",
                    probabilities: bool = False):  # fmt: skip
    """Trace ``variant``'s segmentation on ``meta`` under inference mode; returns ``(resident bytes, trace)``. It
    segments through a :class:`~medseg_mem.variants.trained.TrainedVariant` of ``meta`` networks, the object
    evaluation and ``predict`` segment with (``probabilities``: the class probabilities, as ``predict`` makes them
    for a run that resampled its scans, instead of the label map).

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
    from medseg_mem.variants import TrainedVariant

    inference = inference or InferenceConfig()
    nets = {name: net.eval() for name, net in meta_networks(variant, shape[0], classes, model).items()}
    for net in nets.values() if inference.precision != "fp32" else ():
        autocast_on_meta(net, inference.precision, device, pool_fp32=False)  # models.blocks.pooled
    resident = weight_bytes(nets)  # half weights at a half precision (core.precision.half_convolutions)
    on_meta = dataclasses.replace(inference, precision="fp32")  # the half networks stand for autocast
    with countable(shape, batch):
        image = torch.zeros((batch, *shape), device="meta")
        existing = [image, *(t for net in nets.values() for t in (*net.parameters(), *net.buffers()))]
        run = TrainedVariant(variant, nets, model, classes, on_meta)
        transient = backend_transient(device, inference.channels_last)
        with torch.inference_mode(), representative_slabs(), \
                LiveSetTracer(existing, nets.values(), transient=transient) as tracer:  # fmt: skip
            out = run.probabilities(image) if probabilities else run.segment(image)
            del out
    return resident + image.numel() * FLOAT_BYTES, tracer.trace


class MetaStream:
    """A scan streamed out of core, on ``meta``: what :meth:`~medseg_mem.variants.base.Variant.stream` reads of a
    :class:`~medseg_mem.data.streaming.preprocess.ScanStream` (its shape, chunks made as they are read, the
    downsampled volume), only the chunks whose memory can differ (the first two and the last, as
    :func:`~medseg_mem.inference.slab.representative_slabs`).

    Example:
        >>> [start for start, _ in MetaStream((1, 4, 4, 100)).slabs(16)]
        [0, 16, 96]
    """

    def __init__(self, shape) -> None:
        self.shape = tuple(int(s) for s in shape)

    def slabs(self, depth: int):
        import torch

        from medseg_mem.inference.slab import slab_groups

        starts = list(range(0, self.shape[3], depth))
        for (start,) in slab_groups(starts, 1, representative=True):
            yield start, torch.zeros((*self.shape[:3], min(depth, self.shape[3] - start)), device="meta")

    def downsampled(self, size, depth: int = 16):
        import torch

        return torch.zeros((self.shape[0], *size), device="meta")


def trace_stream(variant, shape, classes, model, inference=None, device: str = "cpu", probabilities: bool = False):
    """Trace ``variant.stream`` (``predict`` out of core) on ``meta``; returns ``(resident bytes, trace)``: the
    weights resident, every chunk, downsampled volume and output made inside the trace (none grows with the last
    axis but the cascade's stage-1 columns, ``K x x x y x Z`` floats, as in memory)."""
    import dataclasses

    import torch

    from medseg_mem.core.config import InferenceConfig
    from medseg_mem.memory.trace import LiveSetTracer
    from medseg_mem.variants import TrainedVariant

    inference = inference or InferenceConfig()
    nets = {name: net.eval() for name, net in meta_networks(variant, shape[0], classes, model).items()}
    for net in nets.values() if inference.precision != "fp32" else ():
        autocast_on_meta(net, inference.precision, device, pool_fp32=False)
    on_meta = dataclasses.replace(inference, precision="fp32")
    with countable(shape, 1):
        existing = [t for net in nets.values() for t in (*net.parameters(), *net.buffers())]
        run = TrainedVariant(variant, nets, model, classes, on_meta)
        transient = backend_transient(device, inference.channels_last)
        with torch.no_grad(), LiveSetTracer(existing, nets.values(), transient=transient) as tracer:
            for out in variant.stream(run, MetaStream(shape), None, probabilities):
                del out
    return weight_bytes(nets), tracer.trace
