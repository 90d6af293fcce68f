"""Peak memory of one inference (or training step), measured the same way on every device.

``peak_bytes`` is the most memory held while the measured callable runs, counting what ``setup`` left resident
(model weights, the input volume) but not the runtime (the Python interpreter, torch's libraries, the
CUDA context) nor anything that existed before ``setup`` ran.

* CUDA (in-process): ``memory_allocated()`` before ``setup`` is the baseline; after ``setup`` the peak
  counter is reset with ``reset_peak_memory_stats()``, the inference runs, and the reading is
  ``max_memory_allocated() - baseline``.
* CPU (a fresh process from the ``spawn`` context, so nothing else the caller allocated is counted): glibc
  is first told to serve blocks of 1 MiB and more with ``mmap`` and to return freed memory at once, so the
  resident set follows the live tensors and readings repeat (:func:`~medseg_mem.memory.rss.pin_glibc_allocator`).
  After ``setup`` the bytes of all live CPU tensors are summed (weights, input), ``VmRSS`` is taken as the
  baseline - so modules that ``setup`` imported are not counted - and the kernel's peak-RSS counter is reset
  by writing ``5`` to ``/proc/self/clear_refs``; the inference runs, and the reading is
  ``tensors + VmHWM - baseline``. Where that write is refused, a thread samples ``VmRSS`` every millisecond
  instead (a lower bound); without ``/proc``, ``ru_maxrss`` is used (only exact when the inference is the
  process's peak).

The callable runs under :func:`torch.inference_mode` by default; with ``grad=True`` it runs with autograd
enabled instead (:func:`torch.enable_grad`), so a training step (forward, loss, backward, optimizer step) can be
measured the same way.
"""

from __future__ import annotations

import ctypes
import gc
import multiprocessing
import pickle
import signal
import traceback
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Tuple

from medseg_mem.core.errors import OptionError
from medseg_mem.memory import rss

CUDA_METHOD = "cuda.max_memory_allocated"


@dataclass(frozen=True)
class MemoryReading:
    """One peak-memory measurement.

    Args:
        peak_bytes: peak bytes held during the inference (see the module docstring for what counts).
        method: how it was measured, e.g. ``"cuda.max_memory_allocated"`` or ``"proc.clear_refs+VmHWM"``.
        device: ``"cpu"`` or the CUDA device it ran on.
        process_bytes: the whole measuring process at that peak (CPU: its resident size, Python, torch and MONAI
            included; CUDA: what the caching allocator had reserved, the CUDA context not included); 0: not read.
    """

    peak_bytes: int
    method: str
    device: str
    process_bytes: int = 0


class MeasurementError(RuntimeError):
    """The measured setup or inference failed (the message carries the child's traceback on CPU)."""


def measure_peak(
    setup: Callable[..., Callable[[], Any]], args: Tuple = (), device: str = "cpu", grad: bool = False,
    reserved: bool = False,
) -> MemoryReading:  # fmt: skip
    """Measure the peak memory of the inference (or training step) that ``setup(*args)`` prepares.

    Args:
        setup: a top-level (picklable) function; called with ``args`` it builds the model(s) and input on
            ``device`` and returns a zero-argument callable that runs the inference.
        args: picklable arguments for ``setup``.
        device: ``"cpu"`` (measured in a spawned process) or ``"cuda"``/``"cuda:N"`` (in this process).
        grad: run the callable with autograd enabled (a training step) instead of under
            :func:`torch.inference_mode` (the default).
        reserved: CUDA only: read what the caching allocator reserves from the device
            (``max_memory_reserved``, after emptying its cache) instead of what tensors hold
            (``max_memory_allocated``): the memory the process really takes, which the planner must predict.

    Raises:
        OptionError: for an unknown ``device`` or a ``setup`` that cannot be pickled.
        MeasurementError: if ``setup`` or the inference raised, or the measuring process died.

    Example:
        >>> reading = measure_peak(allocate_setup, (50_000_000,), "cpu")  # doctest: +SKIP
        >>> reading.method  # doctest: +SKIP
        'proc.clear_refs+VmHWM+glibc-mmap-1MiB'
        >>> from medseg_mem.training.calibration_step import training_setup  # one train_step of a spec U-Net
        >>> args = ((1, 4, 96, 96, 64), 4, (32, 64, 128, 256, 512), "cpu", "bf16", True)
        >>> measure_peak(training_setup, args, "cpu", grad=True).peak_bytes  # doctest: +SKIP
        800235584
    """
    if not isinstance(device, str) or not (device == "cpu" or device.split(":")[0] == "cuda"):
        raise OptionError("device", "must be 'cpu', 'cuda' or 'cuda:N'", device)
    if not isinstance(grad, bool):
        raise OptionError("grad", "must be True (autograd on, training) or False (inference mode)", grad)
    if device == "cpu":
        return _measure_cpu(setup, tuple(args), grad)
    return _measure_cuda(setup, tuple(args), device, grad, reserved)


def autograd_context(grad: bool) -> ContextManager:
    """:func:`torch.enable_grad` for a training step, :func:`torch.inference_mode` for an inference."""
    import torch

    return torch.enable_grad() if grad else torch.inference_mode()


def _measure_cuda(setup: Callable, args: Tuple, device: str, grad: bool, reserved: bool = False) -> MemoryReading:
    """Measure in this process with the CUDA caching allocator's counters (allocated, or reserved)."""
    import torch

    counter = "reserved" if reserved else "allocated"
    torch.cuda.set_device(torch.device(device))
    gc.collect()
    torch.cuda.synchronize()
    if reserved:
        torch.cuda.empty_cache()
    baseline = getattr(torch.cuda, f"memory_{counter}")()
    try:
        run = setup(*args)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        with autograd_context(grad):
            result = run()
        torch.cuda.synchronize()
    except Exception as error:
        raise MeasurementError(f"setup {_name(setup)} failed on {device}: {type(error).__name__}: {error}") from error
    peak = getattr(torch.cuda, f"max_memory_{counter}")() - baseline
    process = torch.cuda.max_memory_reserved()
    del result, run
    return MemoryReading(int(peak), f"cuda.max_memory_{counter}", str(torch.device(device)), int(process))


def _measure_cpu(setup: Callable, args: Tuple, grad: bool) -> MemoryReading:
    """Measure in a fresh ``spawn`` process with the parent's torch thread count."""
    import torch

    try:
        pickle.dumps((setup, args))
    except Exception as error:
        rule = "must be a picklable top-level function with picklable args"
        raise OptionError("setup", rule, _name(setup)) from error
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(sender, setup, args, torch.get_num_threads(), grad), daemon=True)
    process.start()
    sender.close()
    try:
        status, payload, method = receiver.recv()
    except EOFError:
        status, payload, method = "died", None, ""
    finally:
        process.join()
        receiver.close()
    return _reading_from_child(setup, status, payload, method, process.exitcode)


def _reading_from_child(setup, status, payload, method, exitcode) -> MemoryReading:
    """Turn the child's message into a reading, or raise :class:`MeasurementError`."""
    if status == "ok":
        peak, process = payload
        return MemoryReading(int(peak), method, "cpu", int(process))
    if status == "error":
        raise MeasurementError(f"setup {_name(setup)} failed in the measuring process:\n{payload}")
    raise MeasurementError(
        f"the measuring process for {_name(setup)} died with exit code {exitcode} before reporting "
        "(-9: killed, usually for memory; otherwise see its stderr above, e.g. a script without a __main__ guard)"
    )


def _child(sender, setup: Callable, args: Tuple, threads: int, grad: bool = False) -> None:
    """Spawned-process body: setup, baseline, reset the peak, run, report ``(status, bytes, method)``."""
    try:
        import torch

        die_with_parent()
        torch.set_num_threads(threads)
        suffix = rss.PINNED_SUFFIX if rss.pin_glibc_allocator() else ""
        run = setup(*args)
        gc.collect()
        with InProcessPeak("cpu", resident_tensor_bytes()) as peak, autograd_context(grad):
            result = run()
        del result
        sender.send(("ok", (peak.peak_bytes, peak.process_bytes), peak.method + suffix))
    except BaseException as error:  # report everything, including KeyboardInterrupt/SystemExit in user code
        sender.send(("error", "".join(traceback.format_exception(type(error), error, error.__traceback__)), ""))
    finally:
        sender.close()


def resident_tensor_bytes() -> int:
    """Bytes of the distinct CPU storages behind every tensor object alive now (weights, inputs, buffers)."""
    import torch

    storages = {}
    for obj in gc.get_objects():
        if issubclass(type(obj), torch.Tensor) and obj.device.type == "cpu" and obj.layout == torch.strided:
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def die_with_parent() -> None:
    """Ask Linux to terminate this process if the measuring parent dies (best effort, no-op elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _name(setup: Any) -> str:
    """A readable name for a setup callable."""
    return getattr(setup, "__qualname__", None) or repr(setup)


class InProcessPeak:
    """Peak memory of a block in this process, by :func:`measure_peak`'s definition: ``resident_bytes`` (what
    the block's inputs already hold: weights, input volume) plus what the block adds at its peak.

    CPU: ``VmHWM`` reset through ``/proc/self/clear_refs`` (or the fallbacks of :class:`rss.PeakTracker`)
    minus ``VmRSS`` before the block. CUDA: ``max_memory_reserved`` minus ``memory_reserved`` before it, what
    the caching allocator takes from the device. ``predict`` uses it to report its own inference peak, the
    figure ``medseg-mem plan`` predicts.

    Example:
        >>> with InProcessPeak("cpu", resident_bytes=0) as peak:
        ...     block = bytearray(50_000_000)
        >>> peak.peak_bytes >= 50_000_000
        True
    """

    def __init__(self, device: str, resident_bytes: int) -> None:
        self.device, self.resident_bytes = str(device), int(resident_bytes)
        self.peak_bytes, self.method, self._tracker, self._baseline = 0, "", None, 0
        self.process_bytes = 0

    def __enter__(self) -> "InProcessPeak":
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            self._baseline = torch.cuda.memory_reserved()
            torch.cuda.reset_peak_memory_stats()
        else:
            self._baseline = rss.current_bytes()
            self._tracker = rss.PeakTracker().__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._tracker is None:
            import torch

            torch.cuda.synchronize()
            self.process_bytes = int(torch.cuda.max_memory_reserved())
            added, self.method = self.process_bytes - self._baseline, "cuda.max_memory_reserved"
        else:
            self._tracker.__exit__(*exc)
            self.process_bytes = int(self._tracker.peak_bytes)
            added, self.method = self._tracker.peak_bytes - self._baseline, self._tracker.method
        self.peak_bytes = self.resident_bytes + max(0, int(added))
