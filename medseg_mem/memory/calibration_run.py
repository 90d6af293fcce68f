"""The calibration's measurements: one fresh process that first becomes what a ``predict`` or ``run`` process is
before it allocates tensors (its baseline), then runs a few networks one after the other.

On the CPU the child (``spawn``; glibc pinned as :func:`~medseg_mem.memory.measure.measure_peak` pins it)

1. imports what those processes import (:data:`PROCESS_MODULES`: torch, MONAI, nibabel, the networks) and does
   what they do before their first network runs (:func:`warm_up`: a plan, a small NIfTI read and inverted through
   MONAI, a checkpoint saved and loaded). Its resident size then, less its live tensors, is the **process
   baseline**: Python, torch's and MONAI's libraries and what their first use sets up;
2. runs each ``setup(*args)``'s callable once, in order, each reading its peak above what was resident before it
   (:class:`~medseg_mem.memory.measure.InProcessPeak`). The first is the process's first network call (what it
   sets up once stays in the reading); each later one is the first call at its size (what the backend sets up per
   size stays in it too, as in ``predict``, which runs each scan's size once).

A watchdog thread ends the child the moment its resident size passes ``limit_bytes`` (the caller's budget less
what the caller holds), so a calibration never takes more memory than it was given. On CUDA the series runs in
this process (``max_memory_reserved``; baseline 0: the CUDA context is not counted).
"""

from __future__ import annotations

import gc
import importlib
import multiprocessing
import os
import tempfile
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from medseg_mem.memory import rss
from medseg_mem.memory.measure import MeasurementError, autograd_context, die_with_parent

#: What a ``medseg-mem predict`` or ``run`` process has imported before its first network runs (measured: the
#: same resident size, 317-318 MiB, as importing ``medseg_mem.predict.segment`` or ``medseg_mem.runner.run``).
PROCESS_MODULES = ("torch", "monai", "monai.transforms", "monai.data", "monai.losses", "nibabel",
                   "medseg_mem.models.build", "medseg_mem.variants")  # fmt: skip
OVER_LIMIT = 75  # the child's exit code when its watchdog stopped it
WATCH_SECONDS = 0.002


@dataclass(frozen=True)
class Series:
    """What one calibration process measured.

    Args:
        baseline_bytes: resident bytes of the process before its first network, less its live tensors.
        peaks: each setup's peak (its resident tensors plus what its call added), in order.
        method: how the peaks were read (``InProcessPeak``'s method).
    """

    baseline_bytes: int
    peaks: Tuple[int, ...]
    method: str


def measure_series(setup: Callable, args_list: Sequence[Tuple], device: str = "cpu", grad: bool = False,
                   limit_bytes: Optional[int] = None) -> Series:  # fmt: skip
    """Measure ``setup(*args)`` for each ``args`` of ``args_list`` in one fresh process (see the module docstring).

    Raises:
        MeasurementError: a setup failed, the child died, or it passed ``limit_bytes`` (said so, with the limit).
    """
    if str(device).startswith("cuda"):
        return _series_cuda(setup, args_list, device, grad)
    import torch

    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    payload = (setup, list(args_list), torch.get_num_threads(), grad, limit_bytes)
    process = context.Process(target=_series_child, args=(sender, *payload), daemon=True)
    process.start()
    sender.close()
    try:
        status, result = receiver.recv()
    except EOFError:
        status, result = "died", None
    finally:
        process.join()
        receiver.close()
    if status == "ok":
        return Series(*result)
    if status == "error":
        raise MeasurementError(f"the calibration's measuring process failed:\n{result}")
    raise MeasurementError(_death(process.exitcode, limit_bytes))


def _death(exitcode: int, limit_bytes: Optional[int]) -> str:
    """Why the measuring process ended without a reading."""
    if exitcode == OVER_LIMIT:
        from medseg_mem.core.units import format_bytes

        return (f"the calibration's measuring process stopped at its memory limit of {format_bytes(limit_bytes)} "
                "(the budget less what this process holds)")  # fmt: skip
    return (f"the calibration's measuring process died with exit code {exitcode} before reporting (-9: killed, "
            "usually for memory)")  # fmt: skip


def _series_child(sender, setup: Callable, args_list: List[Tuple], threads: int, grad: bool,
                  limit_bytes: Optional[int]) -> None:  # fmt: skip
    """Spawned-process body: pin glibc, watch the limit, import, warm up, measure each setup in order."""
    try:
        die_with_parent()
        suffix = rss.PINNED_SUFFIX if rss.pin_glibc_allocator() else ""
        if limit_bytes:
            threading.Thread(target=_watch, args=(int(limit_bytes),), daemon=True).start()
        import torch

        torch.set_num_threads(threads)
        for name in PROCESS_MODULES:
            importlib.import_module(name)
        warm_up()
        baseline = process_baseline()
        peaks, method = [], ""
        for args in args_list:
            peak, method = _one_peak(setup, args, grad)
            peaks.append(peak)
        sender.send(("ok", (int(baseline), tuple(peaks), method + suffix)))
    except BaseException as error:  # report everything, the child's traceback included
        sender.send(("error", "".join(traceback.format_exception(type(error), error, error.__traceback__))))
    finally:
        sender.close()


def _one_peak(setup: Callable, args: Tuple, grad: bool) -> Tuple[int, str]:
    """The peak of one setup's callable (its resident tensors included), freed before the next one."""
    from medseg_mem.memory.measure import InProcessPeak, resident_tensor_bytes

    run = setup(*args)
    gc.collect()
    with InProcessPeak("cpu", resident_tensor_bytes()) as peak, autograd_context(grad):
        result = run()
    del result, run
    gc.collect()
    return int(peak.peak_bytes), peak.method


def process_baseline() -> int:
    """Resident bytes of this process less its live tensors' bytes, after handing back freed heap memory."""
    from medseg_mem.memory.measure import resident_tensor_bytes

    gc.collect()
    rss.release_freed_heap()
    return rss.current_bytes() - resident_tensor_bytes()


def warm_up() -> None:
    """What ``predict`` and ``run`` do before their first network call: plan (the planner's meta trace imports
    torch's decompositions and, through them, ``torch._dynamo`` and sympy: about 75 MiB of the process), read a
    small NIfTI with MONAI's ``LoadImaged`` (nibabel), orient and normalise it and invert it (``Invertd``), save and
    load a checkpoint."""
    from medseg_mem.core.config import ModelConfig, TrainConfig
    from medseg_mem.memory.planner import plan_variant

    tiny = ModelConfig(channels=(2, 4))
    plan_variant("cascade", (1, 8, 8, 8), 2, tiny, TrainConfig(batch_size=2, channels_last=False))
    plan_variant("cascade", (1, 8, 8, 8), 2, tiny)
    import nibabel as nib
    import numpy as np
    import torch
    from monai.transforms import Compose, EnsureChannelFirstd, Invertd, LoadImaged, NormalizeIntensityd, Orientationd

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "warm-up.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), str(path))
        steps = Compose([LoadImaged("image", reader="NibabelReader"), EnsureChannelFirstd("image"),
                         Orientationd("image", axcodes="RAS", labels=None), NormalizeIntensityd("image")])  # fmt: skip
        data = steps({"image": str(path)})
        Invertd("image", steps, orig_keys="image")(dict(data))
        torch.save({"weights": torch.zeros(8)}, Path(folder) / "warm-up.pt")
        torch.load(Path(folder) / "warm-up.pt", weights_only=True)


def _watch(limit_bytes: int) -> None:
    """End this process (exit code :data:`OVER_LIMIT`) as soon as its resident size passes ``limit_bytes``."""
    import time

    while True:
        if rss.current_bytes() > limit_bytes:
            os._exit(OVER_LIMIT)
        time.sleep(WATCH_SECONDS)


def _series_cuda(setup: Callable, args_list: Sequence[Tuple], device: str, grad: bool) -> Series:
    """The series in this process with the CUDA allocator's reserved counters (baseline 0)."""
    from medseg_mem.memory.measure import measure_peak

    readings = [measure_peak(setup, tuple(args), device, grad=grad, reserved=True) for args in args_list]
    return Series(0, tuple(r.peak_bytes for r in readings), readings[0].method if readings else "")
