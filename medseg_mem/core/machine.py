"""The memory this machine has free: ``MemAvailable`` from ``/proc/meminfo`` (else free physical pages).

Read before any voxel is (a NIfTI header that declares more than is free is refused) and for default budgets
(:func:`medseg_mem.memory.budget.default_budget`).
"""

from __future__ import annotations

import os

from medseg_mem.core.errors import MedsegError

MEMINFO = "/proc/meminfo"


def available_ram() -> int:
    """``MemAvailable`` in bytes, or free physical pages where ``/proc/meminfo`` is missing.

    Raises:
        MedsegError: neither can be read (then only an explicit ``--budget`` can say how much memory there is).
    """
    try:
        with open(MEMINFO) as stream:
            for line in stream:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError) as error:
        raise MedsegError(f"--budget: not given, and the free memory cannot be read here (no {MEMINFO}, no "
                          "sysconf SC_AVPHYS_PAGES); give one, e.g. --budget 8GB") from error
