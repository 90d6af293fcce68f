"""The memory a command may plan for when the user gives no ``--budget``: what is free now, less a margin.

CUDA: the free device memory (``torch.cuda.mem_get_info``), which already excludes what other processes and
this process's CUDA context hold. CPU: ``MemAvailable`` from ``/proc/meminfo`` (else free physical pages).
Either way :data:`MARGIN` of it is kept back: other processes start, the allocator fragments, and a plan
that fits to the last byte runs out of memory all the same.
"""

from __future__ import annotations

from typing import Tuple

from medseg_mem.core import machine
from medseg_mem.core.errors import OptionError

MARGIN = 0.10  # share of the free memory a default budget leaves unplanned


def default_budget(device: str) -> Tuple[int, str]:
    """The memory a run on ``device`` may use, and where that number came from.

    Raises:
        OptionError: if ``device`` is CUDA but no CUDA device is available.

    Example:
        >>> budget, source = default_budget("cpu")
        >>> source.startswith("available RAM") and budget > 0
        True
    """
    free, what = _free_bytes(device)
    return int(free * (1 - MARGIN)), f"{what} less a {MARGIN:.0%} margin"


def _free_bytes(device: str) -> Tuple[int, str]:
    """Free memory of ``device`` now, and what it is."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise OptionError("--device", "needs a CUDA device, and none is available", device)
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free), f"free memory of {torch.cuda.get_device_name(torch.device(device))}"
    return machine.available_ram(), "available RAM"
