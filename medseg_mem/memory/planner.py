"""Predict the peak memory of each variant before anything large is allocated, and check it against a budget.

The prediction follows the code that will run: the variant's own ``segment`` recipe (inference) or one
training step per stage is executed on the ``meta`` device at the target size under a
:class:`~medseg_mem.memory.trace.LiveSetTracer`, which yields the live bytes after every op, split into the
networks' internal tensors and everything else. So ``full`` is one U-Net pass at the padded volume, ``patch``
one padded slab batch plus the stitched output, ``cascade`` the worse of stage 1 at the downsampled volume and
stage 2 on a guided slab, plus the full-resolution guidance and outputs - and it stays right when the widths,
depth, slab size or channels change. A device calibration (:mod:`medseg_mem.memory.calibration`) scales the
network part and adds a constant::

    predicted = weights + input [+ Adam states] + max_t(outside(t) + multiplier * inside(t)) + offset [+ host]

Training follows :func:`medseg_mem.training.step.train_step` and its levers: ``precision`` (autocast cannot
run on ``meta``, so a bf16/fp16 step is traced with the network converted to the half dtype, float32 logits
for the loss, float32 master gradients, and on CPU the float32 max-pool that CPU autocast uses),
``checkpointing`` (the meta U-Net is built with it, so the trace sees the recomputation) and the batch size.
The loader's host memory (:func:`loader_host_bytes`) is reported as ``host_bytes``; on a CPU device it shares
the budget and is part of ``predicted_bytes``.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import List, Sequence, Tuple

from medseg_mem.config import TrainConfig
from medseg_mem.errors import OptionError
from medseg_mem.memory.calibration import UNCALIBRATED, Calibration
from medseg_mem.names import PRECISION_NAMES

MODES = ("inference", "training")
FLOAT_BYTES = 4
LABEL_BYTES = 1  # the loader's uint8 label; train_step makes its int64 copy (traced)
ADAM_STATES = 2  # exp_avg and exp_avg_sq, one copy of the weights each
PREFETCH_FACTOR = 2  # batches a DataLoader worker prepares ahead (torch's default)
DEFAULT_CACHE_BYTES = TrainConfig.cache_bytes
HALF_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True)
class Plan:
    """The predicted peak memory of one variant.

    Args:
        variant: ``full``, ``patch`` or ``cascade``.
        mode: ``inference`` or ``training``.
        predicted_bytes: predicted peak, resident weights and input included.
        budget_bytes: the memory available to it.
        fits: ``predicted_bytes <= budget_bytes``.
        resident_bytes: weights and input (plus the float32 optimizer states in training).
        traced_bytes: the uncalibrated structural peak of the activations (and gradients in training).
        calibration: key of the calibration applied (``uncalibrated`` for none).
        host_bytes: host memory of the training loader (:func:`loader_host_bytes`; 0 for inference). Part of
            ``predicted_bytes`` on a CPU device, reported beside it on CUDA.
        precision: training precision (``fp32``, ``bf16`` or ``fp16``; inference plans are float32).
        checkpointing: whether the training step recomputes activations (activation checkpointing).
        channels_last: whether the training network is laid out channels-last (the calibration's setting; the
            structural count is the same for both layouts).
    """

    variant: str
    mode: str
    predicted_bytes: int
    budget_bytes: int
    fits: bool
    resident_bytes: int
    traced_bytes: int
    calibration: str
    host_bytes: int = 0
    precision: str = "fp32"
    checkpointing: bool = False
    channels_last: bool = False

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
    precision: str = "fp32",
    checkpointing: bool = False,
    workers: int = 0,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    device: str = "cpu",
    channels_last: bool = False,
) -> Plan:
    """Predict the peak memory of ``variant`` for images of ``shape`` and check it against ``budget_bytes``.

    Args:
        variant: a name from :data:`medseg_mem.names.VARIANT_NAMES`.
        shape: image shape ``(C, X, Y, Z)``.
        classes: output classes K, background included.
        model: a :class:`~medseg_mem.config.ModelConfig` (widths, slab size, downsample, guidance); default spec.
        batch: images per inference, or slabs / volumes per training step.
        mode: ``inference`` (under ``torch.inference_mode``) or ``training`` (one Adam step).
        calibration: device correction; :data:`UNCALIBRATED` gives the raw structural count. Use a training
            calibration for training plans (:func:`~medseg_mem.memory.calibration.cached_calibration`).
        budget_bytes: memory available.
        precision: training only: ``fp32``, or autocast to ``bf16`` / ``fp16``.
        checkpointing: training only: activation checkpointing of every U-Net level.
        workers: training only: DataLoader worker processes (0: loading in the training process).
        cache_bytes: training only: host memory the loader may fill with cached cases.
        device: ``cpu`` (host memory shares the budget) or ``cuda`` (budget is device memory; the autocast
            policy of the device is followed).
        channels_last: training only: the layout of the network, recorded in the plan (pass the calibration
            measured with it: the backend's extra memory is what differs).

    Raises:
        OptionError: for a bad shape, class count, batch, mode, precision, worker count or cache size;
            MedsegError for an unknown variant.

    Example:
        >>> plan_variant("full", (1, 512, 512, 500), 3, budget_bytes=64 * 10**9).fits
        False
        >>> plan_variant("full", (4, 96, 96, 64), 4, mode="training", precision="bf16", checkpointing=True,
        ...              workers=2, device="cuda").host_bytes > 0
        True
    """
    from medseg_mem.config import ModelConfig
    from medseg_mem.variants import get_variant

    shape, model = check_shape(shape), model or ModelConfig()
    _check_counts(classes, batch, mode)
    _check_training(precision, workers, cache_bytes)
    if mode == "inference":
        (resident, trace), host = _trace_inference(get_variant(variant), shape, classes, model, batch), 0
    else:
        lever = (precision, bool(checkpointing), device)
        resident, trace = _trace_training(get_variant(variant), shape, classes, model, batch, lever)
        host = loader_host_bytes(shape, batch, workers, cache_bytes)
    predicted = int(resident + trace.peak(calibration.multiplier) + calibration.offset_bytes)
    predicted += 0 if str(device).startswith("cuda") else host
    training = mode == "training"
    return Plan(
        variant, mode, predicted, int(budget_bytes), predicted <= budget_bytes, int(resident), int(trace.peak()),
        calibration.key, int(host), precision if training else "fp32", bool(checkpointing) and training,
        bool(channels_last) and training,
    )  # fmt: skip


def loader_host_bytes(shape: Sequence[int], batch: int, workers: int, cache_bytes: int) -> int:
    """Host memory of the training loader: the case cache plus the samples being read and cut.

    Each of ``max(1, 2 * workers) * batch`` samples in flight (a worker prepares two batches ahead; without
    workers one batch is read in the training process) holds one whole case while it is read and cut: its
    float32 image ``C*X*Y*Z*4`` and uint8 label ``X*Y*Z`` bytes. The cache is bounded by ``cache_bytes``
    whatever the number of cases, so neither term grows with the dataset.

    Example:
        >>> loader_host_bytes((4, 10, 10, 10), batch=2, workers=0, cache_bytes=0)
        34000
    """
    voxels = int(shape[1]) * int(shape[2]) * int(shape[3])
    sample = int(shape[0]) * voxels * FLOAT_BYTES + voxels * LABEL_BYTES
    return int(cache_bytes) + max(1, PREFETCH_FACTOR * int(workers)) * int(batch) * sample


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


def _check_training(precision: str, workers: int, cache_bytes: int) -> None:
    """Validate the training levers: ``precision``, ``workers`` (>= 0) and ``cache_bytes`` (>= 0)."""
    if precision not in PRECISION_NAMES:
        raise OptionError("--precision", f"must be one of {', '.join(PRECISION_NAMES)}", precision)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise OptionError("--workers", "must be a whole number >= 0 (0 loads in the training process)", workers)
    if isinstance(cache_bytes, bool) or not isinstance(cache_bytes, int) or cache_bytes < 0:
        raise OptionError("--cache", "must be a size >= 0 like 4GB or 512MiB", cache_bytes)


def _meta_networks(variant, image_channels: int, classes: int, model, checkpointing: bool = False):
    """One random-free ``meta`` U-Net per stage, keyed by stage name."""
    import torch

    from medseg_mem.models.unet import UNet3D

    with torch.device("meta"):
        return {
            stage.name: UNet3D(stage.in_channels(image_channels, classes, model), classes, model.channels,
                               checkpointing=checkpointing)
            for stage in variant.stages()
        }  # fmt: skip


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


def _trace_training(variant, shape, classes, model, batch, lever):
    """Trace one training step of each stage; return the worst stage's ``(resident bytes, trace)``.

    ``lever`` is ``(precision, checkpointing, device)``.
    """
    nets = _meta_networks(variant, shape[0], classes, model, lever[1])
    worst = None
    for stage in variant.stages():
        resident, trace = _trace_step(nets[stage.name], batch, _stage_size(stage, shape, model), *lever)
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


def _trace_step(net, batch: int, size: Tuple[int, ...], precision: str, checkpointing: bool, device: str):
    """Trace one training step of ``net``; return ``(resident bytes, trace)``.

    Traced: everything :func:`~medseg_mem.training.step.train_step` allocates, gradients included (the
    optimizer's step comes after the backward pass, when the activations are gone, and is not traced).
    """
    import torch

    from medseg_mem.memory.trace import LiveSetTracer

    net.train()
    image = torch.zeros((batch, net.in_channels, *size), device="meta")
    label = torch.zeros((batch, 1, *size), dtype=torch.uint8, device="meta")
    resident = _training_resident(net, image, label, precision, checkpointing)
    master_grads = []  # keeps the float32 gradients alive, as the float32 weights' .grad would
    if precision != "fp32":
        _autocast_network(net, precision, device, master_grads)
    existing = [image, label, *net.parameters(), *net.buffers()]
    with torch.enable_grad(), LiveSetTracer(existing, all_inside=True) as tracer:
        _step_on_meta(net, image, label)
    return resident, tracer.trace


def _training_resident(net, image, label, precision: str, checkpointing: bool) -> int:
    """Bytes held through a whole training step of the float32 ``net``.

    Float32 weights and buffers, the two float32 Adam states, the float32 image and the uint8 label; for
    bf16/fp16 without checkpointing also autocast's half copies of the convolution weights (saved for the
    backward pass; with checkpointing they are dropped when the forward pass ends and recast one level at a
    time during the backward pass).
    """
    parameters = sum(_nbytes(p) for p in net.parameters())
    resident = _weight_bytes({"net": net}) + ADAM_STATES * parameters + _nbytes(image) + _nbytes(label)
    if precision != "fp32" and not checkpointing:
        resident += _conv_weight_bytes(net) // 2
    return resident


def _conv_weight_bytes(net) -> int:
    """Float32 bytes of the (transposed) convolutions' weights and biases: what autocast casts."""
    import torch

    convs = [m for m in net.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    return sum(_nbytes(p) for conv in convs for p in conv.parameters())


def _nbytes(tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _autocast_network(net, precision: str, device: str, master_grads: List) -> None:
    """Make ``net`` compute as under ``torch.autocast(device, precision)``, which cannot run on ``meta``.

    The weights are converted to the half dtype (autocast's weight copies; their bytes are counted by
    :func:`_training_resident`, not traced), each convolution casts its input
    to it (so the float32 input is padded, and stored by a checkpointed first level, in float32 as under
    autocast), gradients are replaced by float32 master gradients as they arrive, and on CPU the max-pool runs
    in float32 (CPU autocast's policy: its input is upcast and kept for backward, its output cast back).
    """
    import torch

    dtype = getattr(torch, HALF_DTYPES[precision])
    for parameter in net.parameters():
        parameter.register_post_accumulate_grad_hook(functools.partial(_master_grad, master_grads))
    net.to(dtype)
    for conv in (m for m in net.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))):
        conv.register_forward_pre_hook(lambda module, args: (args[0].to(dtype),))
    if not str(device).startswith("cuda"):
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
