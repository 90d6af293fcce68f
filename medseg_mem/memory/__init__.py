"""Memory: measure the peak of an inference, and plan which variant fits a budget before running it.

* :mod:`~medseg_mem.memory.measure` - :func:`measure_peak` (CUDA allocator counters, or peak RSS of a spawned
  CPU process; helpers in :mod:`~medseg_mem.memory.rss`).
* :mod:`~medseg_mem.memory.trace` - live-set tracing of a computation on the ``meta`` device.
* :mod:`~medseg_mem.memory.calibration` - the per-device correction of the traced count, cached in JSON.
* :mod:`~medseg_mem.memory.planner` - :func:`plan_variant`: predicted peak per variant against a budget.
* :mod:`~medseg_mem.memory.units` - ``8GB`` / ``512MiB`` parsing and printing.

Importing this package does not import torch.
"""

from medseg_mem.memory.calibration import Calibration, calibrate, cached_calibration
from medseg_mem.memory.measure import MeasurementError, MemoryReading, measure_peak
from medseg_mem.memory.planner import Plan, default_budget, plan_variant, plan_variants
from medseg_mem.memory.units import format_bytes, parse_bytes

__all__ = [
    "Calibration", "MeasurementError", "MemoryReading", "Plan", "cached_calibration", "calibrate", "default_budget",
    "format_bytes", "measure_peak", "parse_bytes", "plan_variant", "plan_variants",
]  # fmt: skip
