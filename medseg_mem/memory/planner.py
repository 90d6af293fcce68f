"""Predict the peak memory of each variant before anything large is allocated, and check it against a budget.

The prediction follows the code that will run: the variant's own ``segment`` recipe (inference) or one
training step per stage is executed on the ``meta`` device at the target size under a
:class:`~medseg_mem.memory.trace.LiveSetTracer`, which yields the live bytes after every op, split into the
networks' internal tensors and everything else. So ``full`` is one U-Net pass at the padded volume, ``patch``
one padded slab batch plus the stitched output, ``cascade`` the worse of stage 1 at the downsampled volume and
stage 2 on a guided slab, plus the full-resolution guidance and outputs - and it stays right when the widths,
depth, slab size or channels change. A device calibration (:mod:`medseg_mem.memory.calibration`) scales the
network part and adds a constant::

    predicted = weights + input [+ grads + Adam states] + max_t(outside(t) + multiplier * inside(t)) + offset
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import List, Sequence, Tuple

from medseg_mem.errors import OptionError
from medseg_mem.memory.calibration import UNCALIBRATED, Calibration

MODES = ("inference", "training")
FLOAT_BYTES = 4
ADAM_STATES = 2  # exp_avg and exp_avg_sq, one copy of the weights each


@dataclass(frozen=True)
class Plan:
    """The predicted peak memory of one variant.

    Args:
        variant: ``full``, ``patch`` or ``cascade``.
        mode: ``inference`` or ``training``.
        predicted_bytes: predicted peak, resident weights and input included.
        budget_bytes: the memory available to it.
        fits: ``predicted_bytes <= budget_bytes``.
        resident_bytes: weights and input (plus gradients and optimizer states in training).
        traced_bytes: the uncalibrated structural peak of the activations.
        calibration: key of the calibration applied (``uncalibrated`` for none).
    """

    variant: str
    mode: str
    predicted_bytes: int
    budget_bytes: int
    fits: bool
    resident_bytes: int
    traced_bytes: int
    calibration: str

    def to_dict(self) -> dict:
        return asdict(self)


def check_shape(shape: Sequence[int]) -> Tuple[int, int, int, int]:
    """Validate an image shape ``(C, X, Y, Z)`` of positive integers.

    Raises:
        OptionError: naming ``--shape``, the rule and the value.
    """
    shape = tuple(shape)
    if len(shape) != 4 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise OptionError("--shape", "must be four positive integers C,X,Y,Z (channels, then the volume)", shape)
    return shape


def plan_variant(
    variant: str,
    shape: Sequence[int],
    classes: int,
    model=None,
    batch: int = 1,
    mode: str = "inference",
    calibration: Calibration = UNCALIBRATED,
    budget_bytes: int = 0,
) -> Plan:
    """Predict the peak memory of ``variant`` for images of ``shape`` and check it against ``budget_bytes``.

    Args:
        variant: a name from :data:`medseg_mem.names.VARIANT_NAMES`.
        shape: image shape ``(C, X, Y, Z)``.
        classes: output classes K, background included.
        model: a :class:`~medseg_mem.config.ModelConfig` (widths, slab size, downsample, guidance); default spec.
        batch: images per inference, or slabs / volumes per training step.
        mode: ``inference`` (under ``torch.inference_mode``) or ``training`` (one Adam step, float32).
        calibration: device correction; :data:`UNCALIBRATED` gives the raw structural count.
        budget_bytes: memory available.

    Raises:
        OptionError: for a bad shape, class count, batch or mode; MedsegError for an unknown variant.

    Example:
        >>> plan_variant("full", (1, 512, 512, 500), 3, budget_bytes=64 * 10**9).fits
        False
    """
    from medseg_mem.config import ModelConfig
    from medseg_mem.variants import get_variant

    shape, model = check_shape(shape), model or ModelConfig()
    _check_counts(classes, batch, mode)
    runner = _trace_inference if mode == "inference" else _trace_training
    resident, trace = runner(get_variant(variant), shape, classes, model, batch)
    predicted = int(resident + trace.peak(calibration.multiplier) + calibration.offset_bytes)
    return Plan(
        variant, mode, predicted, int(budget_bytes), predicted <= budget_bytes, int(resident), int(trace.peak()),
        calibration.key,
    )  # fmt: skip


def plan_variants(variants: Sequence[str], shape: Sequence[int], classes: int, **options) -> List[Plan]:
    """:func:`plan_variant` for each name in ``variants`` (same options)."""
    return [plan_variant(name, shape, classes, **options) for name in variants]


def _check_counts(classes: int, batch: int, mode: str) -> None:
    """Validate ``classes`` (>= 2), ``batch`` (>= 1) and ``mode``."""
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
        raise OptionError("--classes", "must be an integer >= 2 (background included)", classes)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise OptionError("--batch", "must be an integer >= 1", batch)
    if mode not in MODES:
        raise OptionError("--mode", f"must be one of {', '.join(MODES)}", mode)


def _meta_networks(variant, image_channels: int, classes: int, model):
    """One random-free ``meta`` U-Net per stage, keyed by stage name."""
    import torch

    from medseg_mem.models.unet import UNet3D

    with torch.device("meta"):
        return {
            stage.name: UNet3D(stage.in_channels(image_channels, classes, model), classes, model.channels)
            for stage in variant.stages()
        }


def _weight_bytes(nets) -> int:
    return sum(t.numel() * t.element_size() for net in nets.values() for t in (*net.parameters(), *net.buffers()))


def _trace_inference(variant, shape, classes, model, batch):
    """Trace ``variant.segment`` on ``meta`` under inference mode; returns ``(resident bytes, trace)``."""
    import torch

    from medseg_mem.memory.trace import LiveSetTracer

    nets = {name: net.eval() for name, net in _meta_networks(variant, shape[0], classes, model).items()}
    image = torch.zeros((batch, *shape), device="meta")
    existing = [image, *(t for net in nets.values() for t in (*net.parameters(), *net.buffers()))]
    with torch.inference_mode(), LiveSetTracer(existing, nets.values()) as tracer:
        variant.segment(nets, image, model, classes)
    return _weight_bytes(nets) + image.numel() * FLOAT_BYTES, tracer.trace


def _trace_training(variant, shape, classes, model, batch):
    """Trace one training step of each stage; return the worst stage's ``(resident bytes, trace)``."""
    nets = _meta_networks(variant, shape[0], classes, model)
    worst = None
    for stage in variant.stages():
        resident, trace = _trace_step(nets[stage.name], batch, _stage_size(stage, shape, model))
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


def _trace_step(net, batch: int, size: Tuple[int, ...]):
    """Trace forward, Dice+CE loss and backward of one float32 step; weights, grads and Adam states are resident."""
    import torch
    from monai.losses import DiceCELoss

    from medseg_mem.memory.trace import LiveSetTracer

    net.train()
    image = torch.zeros((batch, net.in_channels, *size), device="meta")
    label = torch.zeros((batch, 1, *size), dtype=torch.long, device="meta")
    existing = [image, label, *net.parameters(), *net.buffers()]
    with torch.enable_grad(), LiveSetTracer(existing, all_inside=True) as tracer:
        DiceCELoss(to_onehot_y=True, softmax=True)(net(image), label).backward()
    parameters = sum(p.numel() * p.element_size() for p in net.parameters())
    resident = _weight_bytes({"net": net}) + ADAM_STATES * parameters + image.numel() * FLOAT_BYTES
    return resident + label.numel() * label.element_size(), tracer.trace


def default_budget(device: str) -> Tuple[int, str]:
    """The memory a run on ``device`` may use, and where that number came from.

    CUDA: the device's total memory. CPU: ``MemAvailable`` from ``/proc/meminfo`` (else free physical pages).

    Raises:
        OptionError: if ``device`` is CUDA but no CUDA device is available.
    """
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise OptionError("--device", "needs a CUDA device, and none is available", device)
        total = torch.cuda.get_device_properties(torch.device(device)).total_memory
        return int(total), f"total memory of {torch.cuda.get_device_name(torch.device(device))}"
    return _available_ram(), "available RAM"


def _available_ram() -> int:
    """``MemAvailable`` in bytes, or free physical pages where ``/proc/meminfo`` is missing."""
    import os

    try:
        with open("/proc/meminfo") as stream:
            for line in stream:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
