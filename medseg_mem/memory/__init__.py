"""Memory: measure the peak of an inference or training step, plan the whole process's peak before anything large is
allocated, and check it against a budget.

* :mod:`~medseg_mem.memory.measure` - :func:`measure_peak` (CUDA allocator counters, or peak RSS of a spawned
  CPU process; helpers in :mod:`~medseg_mem.memory.rss`).
* :mod:`~medseg_mem.memory.trace` - live-set tracing of a computation on the ``meta`` device;
  :mod:`~medseg_mem.memory.backend` - what the CPU backend allocates beside the tensors, per op.
* :mod:`~medseg_mem.memory.planner` - :func:`plan_variant`: the predicted peak per variant (inference, or a
  training step and its validation pass, :mod:`~medseg_mem.memory.planner_validation`); what ``predict``'s
  whole-scan preprocessing holds, from the scan's header (:mod:`~medseg_mem.memory.preprocessing`).
* :mod:`~medseg_mem.memory.calibration` - the machine's correction and process baseline, measured once
  (:mod:`~medseg_mem.memory.calibration_run`) and cached in the user's cache
  (:mod:`~medseg_mem.memory.calibration_file`).
* :mod:`~medseg_mem.memory.check` - budget -> lower bound -> calibration -> plan, for ``plan``, the guards of ``run``
  and ``predict`` and ``--variant auto``; :mod:`~medseg_mem.memory.bound` - torch-free lower bounds.
* :mod:`~medseg_mem.core.units` - ``8GB`` / ``512MiB`` parsing and printing.

Importing this package does not import torch.
"""

from medseg_mem.memory.calibration import Calibration, calibrate, cached_calibration
from medseg_mem.memory.measure import MeasurementError, MemoryReading, measure_peak
from medseg_mem.memory.planner import Plan, default_budget, plan_variant, plan_variants
from medseg_mem.core.units import format_bytes, parse_bytes

__all__ = [
    "Calibration", "MeasurementError", "MemoryReading", "Plan", "cached_calibration", "calibrate", "default_budget",
    "format_bytes", "measure_peak", "parse_bytes", "plan_variant", "plan_variants",
]  # fmt: skip
