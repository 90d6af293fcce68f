"""Calibrate the planner against measured peaks on this machine, once, and cache the result for every folder.

The structural count (:mod:`medseg_mem.memory.trace`, with the CPU backend's temporaries of
:mod:`medseg_mem.memory.backend`) sees the tensors and the slow convolutions' column buffers; what is left is
what a backend sets up on a first call (oneDNN primitives and scratch memory, kernels' code pages, thread
pools), what the allocator keeps, and the process itself (Python, torch, MONAI). So the planner predicts::

    process = baseline + resident + max_t(outside + transient + multiplier * inside) + offset

and one calibration measures ``baseline``, ``multiplier`` and ``offset`` in one fresh process
(:func:`~medseg_mem.memory.calibration_run.measure_series`): the baseline after the imports and warm-up of a
``predict``/``run`` process, then the ``full`` variant of a U-Net of :data:`CALIBRATION_WIDTHS` at a small cube
(the process's first network call) and at cubes whose traced count is about :data:`TARGET_BYTES` (each the first
call at its size). ``multiplier`` is the least-squares slope over the larger cubes, ``offset`` the largest
residual over all (plans err above, not below).

A calibration depends on what changes those numbers: the device model (CPU model and thread count, or GPU), the
torch version, inference or training, the precision, checkpointing (training) and the memory layout; it is keyed
by them (:func:`calibration_key`). Not by the widths: the backend's extra memory per traced byte and per first
call does not follow them (benchmarks/bench_plan_vs_predict.py: widths 4-128 to 32-512 against one calibration at
8-128). It takes 10-30 s on the 2-core development CPU and is cached in the user's cache folder
(:mod:`~medseg_mem.memory.calibration_file`).

Training calibrations measure the step ``training_setup`` makes (the caller passes it: the training step lives
in :mod:`medseg_mem.training`, above this layer): forward under autocast, Dice+CE loss, backward, optimizer step.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from medseg_mem.core.errors import MedsegError, OptionError
from medseg_mem.core.files.atomic import write_json_atomic
from medseg_mem.memory.correction import UNCALIBRATED, Calibration

CALIBRATION_WIDTHS = (8, 16, 32, 64, 128)  # narrow: a calibration cube costs little compute per traced byte
KEY_VERSION = "v4"  # v4: whole-process baseline, backend temporaries traced, not keyed by widths
FIRST_SIDE = 32  # the first (smallest) cube: the process's first network call
TARGET_BYTES = (1.2e8, 3.5e8)  # traced bytes of the larger cubes
TRAINING_BATCH = 2  # as run trains (a batch of one sends small float32 convolutions to the slow kernels)
CALIBRATION_CLASSES = 2
HEADROOM = 1.5  # a cube is measured only if 1.5x its uncalibrated plan fits the memory the child may use
MAX_GROWTH_STEPS = 64  # divisor steps a calibration cube may grow past its extrapolated side
MULTIPLIER_RANGE = (0.8, 2.0)  # a slope outside it is noise between two close sizes, not the backend
Shape = Tuple[int, ...]


class CalibrationBudgetError(MedsegError):
    """The budget leaves no room to calibrate beside this process (callers then plan uncalibrated)."""


def device_label(device: str) -> str:
    """The hardware behind ``device``: the GPU model for CUDA; the CPU model, architecture and torch's thread
    count otherwise (oneDNN's scratch memory is per thread).

    Raises:
        OptionError: if ``device`` is CUDA and no CUDA device is available.
    """
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise OptionError("--device", "needs a CUDA device, and none is available", device)
        return f"cuda-{torch.cuda.get_device_name(torch.device(device))}".replace("|", "/")
    model = cpu_model()
    name = f"cpu-{platform.machine() or 'unknown'}{'-' + model if model else ''}-{torch.get_num_threads()}threads"
    return name.replace("|", "/")


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return ""


def calibration_key(
    device: str, mode: str = "inference", precision: str = "fp32", checkpointing: bool = False,
    channels_last: bool = False,
) -> str:  # fmt: skip
    """Cache key: device hardware, torch version, mode, precision, checkpointing (training) and layout.

    Example:
        >>> calibration_key("cpu", "training", "bf16", True, True)  # doctest: +SKIP
        'cpu-x86_64-AMD EPYC 7B13-2threads|torch-2.13.0+cpu|training-v4-bf16-checkpointing-channels-last'
    """
    import torch

    recompute = "-checkpointing" if mode == "training" and checkpointing else ""
    layout = "-channels-last" if channels_last else ""
    return f"{device_label(device)}|torch-{torch.__version__}|{mode}-{KEY_VERSION}-{precision}{recompute}{layout}"


def network_setup(shape: Shape, classes: int, channels: Tuple[int, ...], device: str, precision: str = "fp32",
                  channels_last: bool = False) -> Callable:  # fmt: skip
    """Picklable :func:`~medseg_mem.memory.measure.measure_peak` setup: the ``full`` variant's ``segment`` of a
    random-weight U-Net loaded as ``predict`` loads it (half convolutions at a half precision, ``channels_last``
    weights), on a random input of ``shape``."""
    import torch

    from medseg_mem.core.config import InferenceConfig, ModelConfig
    from medseg_mem.core.precision import half_convolutions
    from medseg_mem.models.build import channels_last_layout
    from medseg_mem.models.unet import UNet3D
    from medseg_mem.variants import TrainedVariant, get_variant

    torch.manual_seed(0)
    net = half_convolutions(UNet3D(shape[1], classes, channels).eval().to(device), precision)
    nets = {"full": channels_last_layout(net) if channels_last else net}
    image, model = torch.randn(shape, device=device), ModelConfig(channels=tuple(channels))
    inference = InferenceConfig(precision=precision, channels_last=channels_last)
    run = TrainedVariant(get_variant("full"), nets, model, classes, inference)
    return lambda: run.segment(image)


def fit(points: Sequence[Tuple[float, float]]) -> Tuple[float, float]:
    """Least-squares ``(multiplier, offset)`` of ``measured = multiplier * traced + offset``.

    Falls back to a line through the origin when fewer than two distinct sizes were measured or the fitted
    slope is not positive.

    Raises:
        MedsegError: if ``points`` is empty.
    """
    if not points:
        raise MedsegError("cannot calibrate the planner without at least one measured point")
    xs, ys = [float(p[0]) for p in points], [float(p[1]) for p in points]
    n, mean_x, mean_y = len(xs), sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if n >= 2 and spread > 0:
        slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / spread
        if slope > 0:
            return slope, mean_y - slope * mean_x
    return sum(ys) / max(sum(xs), 1.0), 0.0


def calibrate(
    device: str = "cpu", mode: str = "inference", precision: str = "fp32", checkpointing: bool = False,
    channels_last: bool = False, limit_bytes: Optional[int] = None, training_setup: Optional[Callable] = None,
    shapes: Optional[Sequence[Shape]] = None, channels: Sequence[int] = CALIBRATION_WIDTHS,
) -> Calibration:  # fmt: skip
    """Measure the ``full`` variant at ``shapes`` in one fresh process and fit the correction (module docstring).

    Args:
        device: ``"cpu"`` or ``"cuda"``.
        mode: ``inference`` (``predict``'s pass) or ``training`` (one step of ``training_setup``).
        precision: ``fp32``, ``bf16`` or ``fp16``.
        checkpointing: training with activation checkpointing.
        channels_last: the network's memory layout.
        limit_bytes: the most the measuring process may hold (CPU); larger cubes that would not fit are left out.
        training_setup: training only: a picklable ``(shape, classes, channels, device, precision,
            checkpointing, channels_last) -> step`` (``medseg_mem.training.calibration_step.training_setup``).
        shapes: the ``(B, 1, X, Y, Z)`` inputs, smallest first (default: :func:`calibration_shapes`).
        channels: U-Net widths of the calibration networks.

    Raises:
        MedsegError: a training calibration without ``training_setup``, or ``limit_bytes`` too small for even
            the smallest cube; MeasurementError when the measuring process fails.
    """
    from medseg_mem.memory.calibration_run import measure_series

    channels = tuple(int(c) for c in channels)
    levers = (mode, precision, bool(checkpointing), bool(channels_last), device)
    if mode == "training" and training_setup is None:
        raise MedsegError("a training calibration needs the training step to measure (training_setup)")
    shapes = [tuple(int(s) for s in shape) for shape in (shapes or calibration_shapes(channels, mode, levers))]
    traces = [point_trace(shape, channels, levers) for shape in shapes]
    shapes, traces = within_limit(shapes, traces, limit_bytes)
    setup, settings = network_setup, (precision, bool(channels_last))
    if mode == "training":
        setup, settings = training_setup, (precision, bool(checkpointing), bool(channels_last))
    arguments = [(shape, CALIBRATION_CLASSES, channels, device, *settings) for shape in shapes]
    series = measure_series(setup, arguments, device, grad=mode == "training", limit_bytes=limit_bytes)
    points = [residual(trace, peak) for trace, peak in zip(traces, series.peaks)]
    multiplier, offset = fitted(points)
    key = calibration_key(device, mode, precision, checkpointing, channels_last)
    return Calibration(multiplier, offset, key, tuple(points), series.baseline_bytes)


def calibration_shapes(channels: Sequence[int], mode: str, levers: Tuple) -> List[Shape]:
    """The first cube (side :data:`FIRST_SIDE`), then cubes (multiples of the U-Net divisor) whose traced network
    count reaches each of :data:`TARGET_BYTES`: a side extrapolated from the first cube's bytes per voxel, grown
    one divisor at a time while the count stays under the target."""
    divisor = 2 ** (len(channels) - 1)
    batch = TRAINING_BATCH if mode == "training" else 1
    first = max(FIRST_SIDE, divisor)
    shapes = [(batch, 1, first, first, first)]
    per_voxel = max(1.0, point_trace(shapes[0], channels, levers)[1].inside_peak() / first**3)
    for target in TARGET_BYTES:
        side = max(first + divisor, round((target / per_voxel) ** (1 / 3) / divisor) * divisor)
        for _ in range(MAX_GROWTH_STEPS):
            if point_trace((batch, 1, side, side, side), channels, levers)[1].inside_peak() >= target:
                break
            side += divisor
        shapes.append((batch, 1, side, side, side))
    return sorted(set(shapes), key=lambda shape: shape[2])


def point_trace(shape: Shape, channels: Sequence[int], levers: Tuple):
    """``(resident bytes, trace)`` the planner counts for the calibration network at ``shape`` ``(B, C, X, Y, Z)``;
    ``levers`` is ``(mode, precision, checkpointing, channels_last, device)``."""
    from medseg_mem.core.config import InferenceConfig, ModelConfig
    from medseg_mem.memory.planner_trace import trace_inference
    from medseg_mem.memory.planner_training import trace_training
    from medseg_mem.variants import get_variant

    mode, precision, checkpointing, channels_last, device = levers
    model, full = ModelConfig(channels=tuple(channels)), get_variant("full")
    if mode == "training":
        lever = (precision, checkpointing, device, 1)
        return trace_training(full, shape[1:], CALIBRATION_CLASSES, model, shape[0], lever, "adam", channels_last,
                              validation=False)[:2]  # fmt: skip
    inference = InferenceConfig(precision=precision, channels_last=channels_last)
    return trace_inference(full, shape[1:], CALIBRATION_CLASSES, model, shape[0], inference, device)


def within_limit(shapes: List[Shape], traces: List, limit_bytes: Optional[int]):
    """The shapes (and traces) whose uncalibrated plan, :data:`HEADROOM` times, fits ``limit_bytes`` beside a
    process like this one.

    Raises:
        CalibrationBudgetError: not even the first fits.
    """
    if not limit_bytes:
        return shapes, traces
    from medseg_mem.core.units import format_bytes
    from medseg_mem.memory import rss

    room = int(limit_bytes) - rss.current_bytes()
    kept = [(s, t) for s, t in zip(shapes, traces) if HEADROOM * (t[0] + t[1].peak()) <= room]
    if not kept or kept[0][0] != shapes[0]:
        raise CalibrationBudgetError(f"a budget of {format_bytes(limit_bytes)} leaves too little beside this process "
                                     "to calibrate the planner (it measures a small U-Net in a second process)")
    return [s for s, _ in kept], [t for _, t in kept]


def residual(trace, peak: int) -> Tuple[int, int]:
    """``(network bytes, measured bytes less what is not scaled)`` at the trace's worst op: the measured peak less
    the resident tensors, the other tensors and the backend's temporaries there."""
    resident, trace = trace
    totals = [o + i + t for o, i, t in zip(trace.outside, trace.inside, trace.transient or [0] * len(trace.inside))]
    worst = max(range(len(totals)), key=totals.__getitem__) if totals else None
    if worst is None:
        return 0, int(peak - resident)
    rest = trace.outside[worst] + (trace.transient[worst] if trace.transient else 0)
    return int(trace.inside[worst]), int(peak - resident - rest)


def fitted(points: Sequence[Tuple[int, int]]) -> Tuple[float, int]:
    """``(multiplier, offset)``: the slope over the points after the first (1 when fewer than two; bounded by
    :data:`MULTIPLIER_RANGE`), and the largest residual above it over all points (never negative)."""
    steady = points[1:]
    multiplier = fit(steady)[0] if len({x for x, _ in steady}) >= 2 else 1.0
    multiplier = min(max(multiplier, MULTIPLIER_RANGE[0]), MULTIPLIER_RANGE[1])
    offset = max(0.0, max(y - multiplier * x for x, y in points))
    return float(multiplier), int(offset)


def load_calibration(path: Path, key: str, option: Optional[str] = "--calibration") -> Optional[Calibration]:
    """The cached calibration for ``key`` in the JSON file at ``path``, or ``None``.

    Raises:
        OptionError: if the file exists but is not a calibration cache (``option`` names it in the message).
    """
    from medseg_mem.memory.calibration_file import read_cache

    path = Path(path)
    if not path.exists():
        return None
    entries = read_cache(path, option)
    return Calibration.from_dict(entries[key]) if key in entries else None


def save_calibration(path: Path, calibration: Calibration, option: Optional[str] = "--calibration") -> Path:
    """Add or replace ``calibration`` in the cache at ``path`` (written atomically; its folder is created)."""
    from medseg_mem.memory.calibration_file import read_cache

    path = Path(path)
    entries = read_cache(path, option) if path.exists() else {}
    entries[calibration.key] = calibration.to_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json_atomic(path, entries)


def cached_calibration(
    path: Optional[Path] = None, device: str = "cpu", allow_measuring: bool = True, announce: Callable = None,
    mode: str = "inference", precision: str = "fp32", checkpointing: bool = False, channels_last: bool = False,
    limit_bytes: Optional[int] = None, training_setup: Optional[Callable] = None,
) -> Calibration:  # fmt: skip
    """The cached calibration for this machine and setting, measured (:func:`calibrate`) and cached when missing.

    Args:
        path: the JSON cache named by ``plan --calibration``; ``None``: the user's cache
            (:func:`~medseg_mem.memory.calibration_file.cache_file`).
        device: ``"cpu"`` or ``"cuda"``.
        allow_measuring: if ``False``, a missing calibration gives :data:`UNCALIBRATED` (raw structural count).
        announce: called with a one-line message before a calibration starts and when it ends.
        mode, precision, checkpointing, channels_last: the setting (see :func:`calibration_key`).
        limit_bytes: the most the measuring process may hold.
        training_setup: the training step to measure (training calibrations).

    Raises:
        CalibrationFileError: the cache cannot be read or written (before measuring, not after).
    """
    from medseg_mem.memory.calibration_file import OPTION, cache_file, check_writable

    option = OPTION if path is not None else None
    path = Path(path) if path is not None else cache_file()
    key = calibration_key(device, mode, precision, checkpointing, channels_last)
    found = load_calibration(path, key, option)
    if found is not None or not allow_measuring:
        return found or UNCALIBRATED
    check_writable(path, option)  # before measuring, not after
    say = announce or (lambda line: None)
    say(f"calibrating the planner for this machine ({key.split('|')[-1]}; once, 10-30 s); caching it in {path}")
    start = time.perf_counter()
    calibration = calibrate(device, mode, precision, checkpointing, channels_last, limit_bytes, training_setup)
    save_calibration(path, calibration, option)
    say(f"calibrated in {time.perf_counter() - start:.0f} s")
    return calibration
