"""Calibrate the planner's structural count against measured peaks on this device, and cache the result.

The structural count (:mod:`medseg_mem.memory.trace`) sees only the tensors PyTorch hands back; backends add
their own temporaries (oneDNN reorders a convolution's input/output into blocked layouts, cuDNN takes a
workspace) and the allocator adds slack. So the planner predicts
``resident + outside + multiplier * network_live + offset`` and fits ``multiplier`` and ``offset`` by least
squares on a few bare U-Net runs measured with :func:`~medseg_mem.memory.measure.measure_peak`, at sizes whose
structural count is a few hundred MB to ~1.5 GB. A calibration is valid for one device, torch version and
width list; it is cached in a JSON file keyed by those three.

Training has its own calibrations (:mod:`medseg_mem.memory.calibration_training`), fitted the same way on
measured training steps (forward, Dice+CE loss,
backward, Adam step through :func:`~medseg_mem.training.step.train_step`) against the planner's training
trace, one per precision, checkpointing and memory layout setting: the backend's extra memory differs between
them (on a CPU, oneDNN's bf16 convolutions on contiguous tensors need about 1.35x the traced bytes with
checkpointing, float32 about 1.0x; channels-last weights spare most of oneDNN's reorders).
Their keys add ``|training-<precision>[-checkpointing][-channels-last]``.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from medseg_mem.atomic import write_json_atomic
from medseg_mem.errors import MedsegError, OptionError
from medseg_mem.names import DEFAULT_WORKDIR
from medseg_mem.writable import check_output_file

CALIBRATION_FILE = DEFAULT_WORKDIR / "planner-calibration.json"
TARGET_BYTES = (3e8, 7e8, 1.4e9)
MAX_GROWTH_STEPS = 64  # divisor steps a calibration cube may grow past its extrapolated side
Shape = Tuple[int, ...]


@dataclass(frozen=True)
class Calibration:
    """Linear correction of the structural network count: ``measured = multiplier * traced + offset``.

    Args:
        multiplier: scale applied to the network-internal live bytes.
        offset_bytes: constant bytes added (backend caches, allocator slack, lazily loaded kernels).
        key: the device / torch version / widths it was fitted for (see :func:`calibration_key`).
        points: the ``(traced_bytes, measured_bytes_above_resident)`` pairs it was fitted on.
    """

    multiplier: float = 1.0
    offset_bytes: int = 0
    key: str = "uncalibrated"
    points: Tuple[Tuple[int, int], ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return {**asdict(self), "points": [list(p) for p in self.points]}

    @classmethod
    def from_dict(cls, data: dict) -> "Calibration":
        points = tuple((int(t), int(m)) for t, m in data.get("points", ()))
        return cls(float(data["multiplier"]), int(data["offset_bytes"]), str(data["key"]), points)


UNCALIBRATED = Calibration()


def device_label(device: str) -> str:
    """Name of the hardware behind ``device``: the GPU model for CUDA, the CPU architecture otherwise.

    Raises:
        OptionError: if ``device`` is CUDA and no CUDA device is available.
    """
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise OptionError("--device", "needs a CUDA device, and none is available", device)
        return f"cuda-{torch.cuda.get_device_name(torch.device(device))}"
    return f"cpu-{platform.machine() or 'unknown'}"


def calibration_key(
    device: str, channels: Sequence[int], mode: str = "inference", precision: str = "fp32", checkpointing: bool = False,
    channels_last: bool = False,
) -> str:
    """Cache key: device hardware, torch version and widths (plus the training levers for a training calibration).

    Example:
        >>> calibration_key("cpu", (32, 64), "training", "bf16", True, True)  # doctest: +SKIP
        'cpu-x86_64|torch-2.13.0+cpu|32-64|training-bf16-checkpointing-channels-last'
    """
    import torch

    key = f"{device_label(device)}|torch-{torch.__version__}|{'-'.join(str(c) for c in channels)}"
    if mode == "training":
        key += f"|training-{precision}{'-checkpointing' if checkpointing else ''}"
    else:  # v3: the row-chunked inference pass (models.lean) and half convolution weights; older entries not reused
        key += f"|inference-v3-{precision}"
    return key + ("-channels-last" if channels_last else "")


def network_setup(shape: Shape, out_channels: int, channels: Tuple[int, ...], device: str, precision: str = "fp32",
                  channels_last: bool = False) -> Callable:  # fmt: skip
    """Picklable :func:`measure_peak` setup: a random-weight U-Net in eval mode (``precision`` autocast,
    ``channels_last`` weights) and a random input of ``shape``."""
    import torch

    from medseg_mem.inference.precision import half_convolutions, with_precision
    from medseg_mem.models.build import channels_last_layout
    from medseg_mem.models.unet import UNet3D

    torch.manual_seed(0)
    net = half_convolutions(UNet3D(shape[1], out_channels, channels).eval().to(device), precision)
    network = with_precision(channels_last_layout(net) if channels_last else net, precision)
    image = torch.randn(shape, device=device)
    return lambda: network(image)


def traced_network_bytes(shape: Shape, out_channels: int, channels: Sequence[int], precision: str = "fp32",
                         device: str = "cpu") -> int:  # fmt: skip
    """Structural live-set peak of one U-Net forward at ``shape`` (input and weights excluded)."""
    import torch

    from medseg_mem.memory.planner_training import autocast_on_meta
    from medseg_mem.memory.trace import LiveSetTracer
    from medseg_mem.models.unet import UNet3D

    with torch.device("meta"):
        net = UNet3D(shape[1], out_channels, channels).eval()
    if precision != "fp32":
        autocast_on_meta(net, precision, device, pool_fp32=False)  # inference pools in the half dtype
    image = torch.zeros(shape, device="meta")
    with torch.inference_mode(), LiveSetTracer([image, *net.parameters(), *net.buffers()], all_inside=True) as tracer:
        net(image)
    return tracer.trace.inside_peak()


def resident_bytes(shape: Shape, out_channels: int, channels: Sequence[int], precision: str = "fp32") -> int:
    """Bytes ``network_setup`` leaves resident: weights (half convolutions at a half precision), buffers and the
    float32 input."""
    import torch

    from medseg_mem.inference.precision import half_convolutions
    from medseg_mem.models.unet import UNet3D

    with torch.device("meta"):
        net = half_convolutions(UNet3D(shape[1], out_channels, channels), precision)
    tensors = [*net.parameters(), *net.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors) + torch.Size(shape).numel() * 4


def calibration_shapes(
    channels: Sequence[int], targets: Sequence[float] = TARGET_BYTES, traced: Optional[Callable] = None, probe: int = 32
) -> List[Shape]:
    """Cubes (multiples of the U-Net divisor) whose structural count is close to each of ``targets`` bytes.

    The side is first extrapolated from the traced bytes per voxel of a ``probe`` cube, then grown one divisor at
    a time while the count stays under the target: the chunked inference pass (:mod:`medseg_mem.models.lean`)
    holds fewer bytes per voxel on large volumes than on the probe.

    Args:
        channels: U-Net widths.
        targets: structural counts to aim at.
        traced: ``shape -> traced bytes`` (default: one inference, :func:`traced_network_bytes`).
        probe: side of the cube whose traced bytes per voxel are extrapolated (at least twice the divisor).
    """
    divisor = 2 ** (len(channels) - 1)
    probe = max(probe, divisor * 2)
    traced = traced or functools.partial(traced_network_bytes, out_channels=2, channels=channels)
    per_voxel = traced((1, 1, probe, probe, probe)) / probe**3
    shapes = []
    for target in targets:
        side = max(divisor, round((target / per_voxel) ** (1 / 3) / divisor) * divisor)
        for _ in range(MAX_GROWTH_STEPS):
            if traced((1, 1, side, side, side)) >= target:
                break
            side += divisor
        shapes.append((1, 1, side, side, side))
    return sorted(set(shapes))


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
    channels: Sequence[int], device: str = "cpu", shapes: Optional[Sequence[Shape]] = None, out_channels: int = 2,
    precision: str = "fp32", channels_last: bool = False,
) -> Calibration:
    """Measure bare U-Net inferences at ``shapes`` (default: :func:`calibration_shapes`) and fit the correction.

    Args:
        channels: U-Net widths; the calibration is only valid for these.
        device: ``"cpu"`` or ``"cuda"``; each run is measured with :func:`measure_peak` (on CUDA what the caching
            allocator reserves, so plans include its slack).
        shapes: ``(1, C, X, Y, Z)`` input shapes, at least two distinct sizes for a slope.
        out_channels: classes of the calibration networks.
        precision: inference precision (autocast dtype) of the calibration runs.
        channels_last: channels-last weights in the calibration runs.

    Example:
        >>> calibrate((4, 8), shapes=[(1, 1, 32, 32, 32), (1, 1, 64, 64, 64)]).multiplier > 0  # doctest: +SKIP
        True
    """
    from medseg_mem.memory.measure import measure_peak

    channels = tuple(int(c) for c in channels)
    points = []
    for shape in shapes or calibration_shapes(channels):
        shape = tuple(int(s) for s in shape)
        setup_args = (shape, out_channels, channels, device, precision, channels_last)
        reading = measure_peak(network_setup, setup_args, device, reserved=device.startswith("cuda"))
        measured = reading.peak_bytes - resident_bytes(shape, out_channels, channels, precision)
        points.append((traced_network_bytes(shape, out_channels, channels, precision, device), int(measured)))
    multiplier, offset = fit(points)
    key = calibration_key(device, channels, "inference", precision, channels_last=channels_last)
    return Calibration(multiplier, int(offset), key, tuple(points))


def load_calibration(path: Path, key: str) -> Optional[Calibration]:
    """The cached calibration for ``key`` in the JSON file at ``path``, or ``None``.

    Raises:
        OptionError: if the file exists but is not a calibration cache.
    """
    path = Path(path)
    if not path.exists():
        return None
    entries = _read_cache(path)
    return Calibration.from_dict(entries[key]) if key in entries else None


def save_calibration(path: Path, calibration: Calibration) -> Path:
    """Add or replace ``calibration`` in the cache at ``path`` (written atomically)."""
    path = Path(path)
    entries = _read_cache(path) if path.exists() else {}
    entries[calibration.key] = calibration.to_dict()
    return write_json_atomic(path, entries)


def cached_calibration(
    path: Path, channels: Sequence[int], device: str, allow_measuring: bool = True, announce: Callable = None,
    mode: str = "inference", precision: str = "fp32", checkpointing: bool = False, channels_last: bool = False,
) -> Calibration:
    """Return the cached calibration for this device/torch/widths, measuring and caching it when missing.

    Args:
        path: the JSON cache.
        channels: U-Net widths.
        device: ``"cpu"`` or ``"cuda"``.
        allow_measuring: if ``False``, a missing calibration gives :data:`UNCALIBRATED` (raw structural count).
        announce: called with a one-line message before a (slow) calibration starts.
        mode: ``inference`` or ``training`` (a calibration per ``precision``, layout and, for training,
            ``checkpointing``).
        precision: autocast precision.
        checkpointing: training with activation checkpointing.
        channels_last: channels-last weights (the default of ``medseg-mem run`` and ``predict``).
    """
    key = calibration_key(device, channels, mode, precision, checkpointing, channels_last)
    found = load_calibration(path, key)
    if found is not None or not allow_measuring:
        return found or UNCALIBRATED
    check_output_file(path, "--calibration")  # before minutes of measuring, not after
    if announce is not None:
        announce(f"calibrating the planner for {key} (one-off, about a minute or two); caching it in {path}")
    if mode == "training":
        from medseg_mem.memory.calibration_training import calibrate_training

        calibration = calibrate_training(channels, device, precision, checkpointing, channels_last=channels_last)
    else:
        calibration = calibrate(channels, device, precision=precision, channels_last=channels_last)
    save_calibration(path, calibration)
    return calibration


def _read_cache(path: Path) -> dict:
    """The ``{key: calibration dict}`` mapping stored at ``path`` (a damaged file: one line with the reason)."""
    from medseg_mem.memory.calibration_file import read_cache

    return read_cache(path)
