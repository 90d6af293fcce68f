"""Predict the peak memory of each variant before anything large is allocated, and check it against a budget.

The prediction follows the code that will run: the variant's own ``segment`` recipe (inference) or one
training step per stage is executed on the ``meta`` device at the target size under a
:class:`~medseg_mem.memory.trace.LiveSetTracer`, which yields the live bytes after every op, split into the
networks' internal tensors and everything else. So ``full`` is one U-Net pass at the padded volume, ``patch``
one padded slab batch plus the stitched output, ``cascade`` the worse of stage 1 at the downsampled volume and
stage 2 on a guided slab, plus the full-resolution guidance and outputs - and it stays right when the widths,
depth, slab size or channels change. On a CPU the trace also holds what the backend allocates while an op runs
(:mod:`medseg_mem.memory.backend`: the slow convolutions' column buffers, oneDNN's weight reorders). A machine's
calibration (:mod:`medseg_mem.memory.calibration`) scales the network part, adds a constant and the process::

    predicted = weights + input [+ optimizer states] + max_t(outside + transient + multiplier * inside) + offset
                [+ host]
    process = baseline + predicted

``offset`` is what a first network call sets up (oneDNN primitives and scratch memory, kernels' code pages: 13-40
MiB measured; a training process holds one per network it trained and per validation pass, :func:`first_calls`);
``baseline`` is the process before its first tensor (Python, torch, MONAI and the planner's own imports: about
400 MiB on the development CPU). ``process_bytes`` is the figure ``free``/``top`` show for the whole process at its
peak, the one ``predict`` and ``run`` print and ``fits`` compares with the budget; ``predicted_bytes`` is what the
work adds to the process (the figure of earlier versions, still in the results' ``peak_memory_bytes``).

Training follows :func:`medseg_mem.training.step.train_step` and its levers: ``precision`` (autocast cannot
run on ``meta``, so a bf16/fp16 step is traced with the network converted to the half dtype, float32 logits
for the loss, float32 master gradients, and on CPU the float32 max-pool that CPU autocast uses),
``checkpointing`` (the meta U-Net is built with it, so the trace sees the recomputation) and the batch size.
The loader's host memory (:func:`loader_host_bytes`: the case cache of the stages that cache, and the samples
in flight) is reported as ``host_bytes``; on a CPU device it shares the budget and is part of ``predicted_bytes``.
Each stage's validation pass is planned beside its step (:mod:`~medseg_mem.memory.planner_validation`). A training
plan for ``nproc`` processes (``torchrun``, DDP) is one rank's: the batch is per process and DDP's gradient buckets
are added (:func:`~medseg_mem.memory.planner_training.ddp_bytes`); on a CPU device the processes share the RAM, so
``fits`` compares ``nproc`` times the plan with the budget.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence, Tuple

from medseg_mem.core.config import InferenceConfig, ModelConfig, TrainConfig
from medseg_mem.core.errors import OptionError
from medseg_mem.memory.budget import default_budget  # noqa: F401 - re-exported: the planner's default budget
from medseg_mem.memory.correction import UNCALIBRATED, Calibration
from medseg_mem.memory.meta import FLOAT_BYTES, check_countable
from medseg_mem.memory.planner_trace import trace_inference, trace_stream
from medseg_mem.memory.planner_training import trace_training

LABEL_BYTES = 1  # the loader's uint8 label; train_step makes its int64 copy (traced)
PREFETCH_FACTOR = 2  # batches a DataLoader worker prepares ahead (torch's default)
DEFAULT_CACHE_BYTES = TrainConfig.cache_bytes


@dataclass(frozen=True)
class Plan:
    """The predicted peak memory of one variant.

    Args:
        variant: ``full``, ``patch`` or ``cascade``.
        mode: ``inference`` or ``training``.
        predicted_bytes: predicted peak, resident weights and input included.
        budget_bytes: the memory available to it.
        fits: ``process_bytes <= budget_bytes``; on a CPU device ``nproc * process_bytes`` (the processes share
            its RAM).
        resident_bytes: weights and input (plus the float32 optimizer states in training).
        traced_bytes: the uncalibrated structural peak of the activations (and gradients in training).
        calibration: key of the calibration applied (``uncalibrated`` for none).
        host_bytes: host memory of the training loader (:func:`loader_host_bytes`; 0 for inference). Part of
            ``predicted_bytes`` on a CPU device, reported beside it on CUDA.
        precision: autocast precision (``fp32``, ``bf16`` or ``fp16``) of training, or of inference.
        checkpointing: whether the training step recomputes activations (activation checkpointing).
        channels_last: whether the network is laid out channels-last (the calibration's setting; the
            structural count is the same for both layouts).
        overlap: inference: the slabs' overlap (0 for training plans and ``full``).
        sw_batch_size: inference: slabs per network call.
        nproc: training: processes training together under DDP; ``predicted_bytes`` is one rank's (1 for
            inference plans).
        tta: inference: the spatial axes every network call is mirrored along (``()``: no test-time mirroring).
        process_bytes: the whole process at its peak: ``baseline_bytes + predicted_bytes``.
        baseline_bytes: the process before its first tensor (the calibration's; 0 uncalibrated).
        stage: training: the stage (or ``<stage> validation``: its validation pass) that needs the most;
            ``inference`` for inference plans, ``preprocessing`` where loading and preprocessing the scan whole needs
            more.
        out_of_core: inference: ``predict`` reads, segments and writes the scan a chunk at a time.
        preprocessing_bytes: inference in memory: the planned peak while ``predict`` loads and preprocesses the
            whole scan (the weights, a first-call offset and :mod:`~medseg_mem.memory.preprocessing`'s figure;
            ``predicted_bytes`` is the larger of it and the inference); 0 when not planned.
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
    overlap: float = 0.0
    sw_batch_size: int = 1
    nproc: int = 1
    tta: Tuple[int, ...] = ()
    process_bytes: int = 0
    baseline_bytes: int = 0
    stage: str = ""
    out_of_core: bool = False
    preprocessing_bytes: int = 0

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
    model: Optional[ModelConfig] = None,
    train: Optional[TrainConfig] = None,
    inference: Optional[InferenceConfig] = None,
    calibration: Calibration = UNCALIBRATED,
    budget_bytes: int = 0,
    device: str = "cpu",
    batch: int = 1,
    input_on_disk: bool = False,
    nproc: int = 1,
    cases: Optional[int] = None,
    traces: Optional[dict] = None,
    validation: bool = True,
    earlier_networks: int = 0,
    out_of_core: bool = False,
    preprocessing: int = 0,
    probabilities: bool = False,
) -> Plan:
    """Predict the peak memory of ``variant`` for images of ``shape`` and check it against ``budget_bytes``.

    With ``train``, one training step (and its validation) with ``run``'s settings; else an inference.

    Args:
        variant: a name from :data:`medseg_mem.core.names.VARIANT_NAMES`.
        shape: image shape ``(C, X, Y, Z)``.
        classes: output classes K, background included.
        model: a :class:`~medseg_mem.core.config.ModelConfig` (widths, slab size, downsample, guidance); default spec.
        train: plan training with these settings (:class:`~medseg_mem.core.config.TrainConfig`): its
            ``batch_size`` (slabs / volumes per step), ``precision``, ``checkpointing``, ``channels_last``,
            ``optimizer`` (Adam: two float32 states per weight, SGD: one), the loader's ``workers`` and
            ``cache_bytes`` (only stages that cache something use it: the cascade's; ``full`` and ``patch`` read
            each sample from disk). ``None``: plan an inference (under ``torch.inference_mode``).
        inference: inference only: an :class:`~medseg_mem.core.config.InferenceConfig` (slab batch, overlap,
            precision and layout, traced as they run; pass the calibration measured for its precision and layout).
        calibration: device correction; :data:`UNCALIBRATED` gives the raw structural count. Use a training
            calibration for training plans (:func:`~medseg_mem.memory.calibration.cached_calibration`).
        budget_bytes: memory available.
        device: ``cpu`` (host memory shares the budget) or ``cuda`` (budget is device memory; the autocast
            policy of the device is followed).
        batch: inference only: images per call.
        input_on_disk: inference only: as ``predict`` runs a variant that reads its image slab by slab
            (:meth:`~medseg_mem.variants.base.Variant.reads_slabs_only`: ``patch``), the image waits in a
            temporary file and is not resident; ``run``'s evaluation holds it (the default).
        nproc: training only: processes training together (DDP under ``torchrun``, one machine); the plan is
            one rank's (``batch_size`` per process, plus :func:`~medseg_mem.memory.planner_training.ddp_bytes`).
        cases: training only: cases in the training split (``None``: enough to fill ``cache_bytes``).
        traces: a dict this call may keep its trace in and take it from (a
            :class:`~medseg_mem.memory.check.MemoryCheck` plans the same work with a bound, then a calibration).
        validation: training only: also plan each stage's validation pass, the training state held
            (:mod:`~medseg_mem.memory.planner_validation`); ``False``: the training step alone.
        earlier_networks: training only: networks this process trained before (``run``'s earlier variants),
            whose first-call setup it still holds (:func:`first_calls`).
        out_of_core: inference only: ``predict --out-of-core`` (:meth:`~medseg_mem.variants.base.Variant.stream`
            traced, plus the engine's buffers, :func:`stream_buffer_bytes`): no term grows with the last axis but
            the cascade's stage-1 columns.
        preprocessing: inference in memory: the bytes ``predict``'s whole-scan preprocessing holds at its peak
            (:func:`~medseg_mem.memory.preprocessing.preprocessing_bytes`); the plan is the larger of that phase
            (with the weights and a first-call offset) and the inference. 0: the inference alone (``run``'s
            evaluation reads prepared cases).
        probabilities: inference: ``predict`` for a run that resampled its scans, which makes the class
            probabilities (``K`` float32 maps, to interpolate back) and keeps its image resident instead of
            spilling it.

    Raises:
        OptionError: for a bad shape, class count, batch or nproc (``train``'s settings are checked by
            ``TrainConfig``); MedsegError for an unknown variant.

    Example:
        >>> plan_variant("full", (1, 512, 512, 500), 3, budget_bytes=16 * 10**9).fits
        False
        >>> train = TrainConfig(batch_size=1, precision="bf16", checkpointing=True, workers=2)
        >>> plan_variant("full", (4, 96, 96, 64), 4, train=train, device="cuda").host_bytes > 0
        True
    """
    shape, model = check_shape(shape), model or ModelConfig()
    mode = "inference" if train is None else "training"
    batch = batch if train is None else train.batch_size
    _check_counts(classes, batch, nproc)
    check_countable(shape, batch, 2 * model.channels[0] + classes)
    on_cpu = not str(device).startswith("cuda")
    inference = (inference or InferenceConfig()) if train is None else None
    training = None if train is None else (train.precision, train.checkpointing, int(train.workers),
                                           int(train.cache_bytes), nproc, train.optimizer, cases,
                                           train.channels_last, bool(validation))  # fmt: skip
    key = (variant, tuple(shape), classes, model, batch, str(device), inference, bool(input_on_disk), training,
           bool(probabilities) and train is None, bool(out_of_core) and train is None)  # fmt: skip
    if traces is None or key not in traces:
        found = _traced(*key)
        if traces is None:
            traces = {}
        traces[key] = found
    resident, trace, stage, host, weights = traces[key]
    offsets = first_calls(variant, stage, earlier_networks) if mode == "training" else 1
    predicted = int(resident + trace.peak(calibration.multiplier) + offsets * calibration.offset_bytes)
    predicted += host if on_cpu else 0
    whole_scan = 0
    if preprocessing and train is None and not out_of_core:  # the networks are loaded before the first scan
        whole_scan = int(weights + calibration.offset_bytes + preprocessing)
        stage = "preprocessing" if whole_scan > predicted else stage
        predicted = max(predicted, whole_scan)
    if train is not None:
        levers = (train.precision, train.checkpointing, train.channels_last, 0.0, 1, nproc, ())
    else:
        slabs = variant != "full"
        levers = (inference.precision, False, inference.channels_last, inference.overlap * slabs,
                  inference.sw_batch_size if slabs else 1, 1, inference.mirror_axes)  # fmt: skip
    process = predicted + calibration.baseline_bytes
    return Plan(
        variant, mode, predicted, int(budget_bytes), _fits(process, budget_bytes, levers[5], device),
        int(resident), int(trace.peak()), calibration.key, int(host), *levers, process, calibration.baseline_bytes,
        stage, key[-1], whole_scan,
    )  # fmt: skip


def _traced(variant: str, shape, classes: int, model, batch: int, device: str, inference, input_on_disk: bool,
            training, probabilities: bool = False, out_of_core: bool = False):  # fmt: skip
    """``(resident bytes, trace, stage, host bytes, weight bytes)`` of one plan (the weights: inference in memory;
    0 otherwise). ``training`` is ``(precision, checkpointing,
    workers, cache_bytes, nproc, optimizer, cases, channels_last, validation)``, ``None`` for an inference."""
    from medseg_mem.variants import get_variant

    if out_of_core:
        resident, trace = trace_stream(get_variant(variant), shape, classes, model, inference, device, probabilities)
        return resident + stream_buffer_bytes(shape, model, inference), trace, "inference", 0, 0
    if training is None:
        resident, trace = trace_inference(get_variant(variant), shape, classes, model, batch, inference, device,
                                          probabilities)  # fmt: skip
        weights = resident - batch * _voxels(shape) * FLOAT_BYTES
        if input_on_disk and get_variant(variant).reads_slabs_only() and not probabilities:
            resident = weights + spilled_slab_bytes(shape, batch, model.slab_size, inference.sw_batch_size)
        return resident, trace, "inference", 0, weights
    precision, checkpointing, workers, cache_bytes, nproc, optimizer, cases, channels_last, validation = training

    def host_of(stage) -> int:
        return loader_host_bytes(shape, batch, workers, stage_cache_bytes(stage, shape, model, cache_bytes, cases))

    lever = (precision, checkpointing, device, nproc)
    on_cpu = not device.startswith("cuda")
    resident, trace, stage = trace_training(get_variant(variant), shape, classes, model, batch, lever, optimizer,
                                            channels_last, host_of if on_cpu else None, validation)  # fmt: skip
    host = host_of(next(s for s in get_variant(variant).stages() if stage.split()[0] == s.name))
    return resident, trace, stage, host, 0


def first_calls(variant: str, stage: str, earlier_networks: int = 0) -> int:
    """How many first-call offsets a training process holds at ``stage`` (``<name>`` or ``<name> validation``):
    each network it trained before (``earlier_networks``, and this variant's earlier stages) kept what its first
    calls set up, the stage's step sets up its own, and a validation pass its inference kernels beside them.
    Measured in ``run --variant all`` on the embedded default (the training peak against the plan): without the
    earlier networks' share, patch after full was 4 % and the cascade after both 5 % over the plan.

    Example:
        >>> first_calls("full", "full validation"), first_calls("cascade", "stage2", earlier_networks=2)
        (2, 4)
    """
    from medseg_mem.variants import get_variant

    name = stage.split()[0]
    index = next(i for i, s in enumerate(get_variant(variant).stages()) if s.name == name)
    return 1 + int(stage.endswith("validation")) + index + int(earlier_networks)


def stage_cache_bytes(stage, shape: Sequence[int], model, cache_bytes: int, cases: Optional[int] = None) -> int:
    """Host bytes the loader's case cache holds while ``stage`` trains: ``cases`` items of the largest case's
    size (:meth:`~medseg_mem.variants.base.Stage.cached_bytes`), as many as ``cache_bytes`` holds (all of
    ``cache_bytes`` when ``cases`` is unknown); 0 for a stage that caches nothing.

    Example:
        >>> from medseg_mem.core.config import ModelConfig
        >>> from medseg_mem.variants import get_variant
        >>> full, (stage1, _) = get_variant("full").stages()[0], get_variant("cascade").stages()
        >>> stage_cache_bytes(full, (1, 100, 100, 100), ModelConfig(), 2**30), stage_cache_bytes(stage1, (1, 100,
        ...     100, 100), ModelConfig(downsample=0.5), 2**30, cases=10)
        (0, 6250000)
    """
    per_case = stage.cached_bytes(tuple(shape[1:]), model, int(shape[0]))
    if per_case == 0:
        return 0
    fitting = int(cache_bytes) // per_case
    return per_case * (fitting if cases is None else min(int(cases), fitting))


def spilled_slab_bytes(shape: Sequence[int], batch: int, slab_size: int, sw_batch_size: int) -> int:
    """Float32 slabs read back from the spilled image (:class:`~medseg_mem.predict.files.SpilledImage`) that a
    network call holds: the trace sees them as views of the input, which it no longer counts.

    Example:
        >>> spilled_slab_bytes((1, 10, 10, 40), 1, 16, 1)
        6400
    """
    slab = batch * int(shape[0]) * int(shape[1]) * int(shape[2]) * min(int(slab_size), int(shape[3])) * FLOAT_BYTES
    return int(sw_batch_size) * slab


def stream_buffer_bytes(shape: Sequence[int], model, inference) -> int:
    """What the out-of-core engine holds outside the traced tensors: the survey's block
    (:data:`~medseg_mem.data.streaming.preprocess.SLAB_BYTES`), a chunk's file read and its RAS copy (float32),
    the writer's kept chunk and its finished block with two copies on the way into the file (4 MiB voxels each).

    Example:
        >>> from medseg_mem.core.config import InferenceConfig, ModelConfig
        >>> stream_buffer_bytes((1, 512, 512, 2000), ModelConfig(), InferenceConfig()) // 2**20
        108
    """
    from medseg_mem.data.streaming.preprocess import SLAB_BYTES
    from medseg_mem.data.streaming.writer import EMIT_VOXELS

    plane = int(shape[0]) * int(shape[1]) * int(shape[2])
    chunk = plane * min(int(model.slab_size) * int(inference.sw_batch_size), int(shape[3]))
    return SLAB_BYTES + 2 * chunk * FLOAT_BYTES + chunk + 3 * EMIT_VOXELS


def _fits(predicted: int, budget_bytes: int, nproc: int, device: str) -> bool:
    """Whether ``nproc`` processes of ``predicted`` bytes each fit ``budget_bytes``: on a CPU device they share
    the RAM the budget is, on CUDA each has a GPU of its own."""
    sharing = 1 if str(device).startswith("cuda") else nproc
    return sharing * predicted <= budget_bytes


def _voxels(shape: Sequence[int]) -> int:
    """``C * X * Y * Z`` of an image shape."""
    return int(shape[0]) * int(shape[1]) * int(shape[2]) * int(shape[3])


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


def _check_counts(classes: int, batch: int, nproc: int) -> None:
    """Validate ``classes`` (>= 2), ``batch`` (>= 1) and ``nproc`` (>= 1)."""
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
        raise OptionError("--classes", "must be an integer >= 2 (background included)", classes)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise OptionError("--batch", "must be an integer >= 1", batch)
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise OptionError("--nproc", "must be an integer >= 1 (processes training together)", nproc)
