"""Lower bounds of a process's peak that need neither torch nor a calibration: the answer to absurd settings in
well under a second.

``run --variant patch --batch-size 100000000`` cannot fit any machine, and saying so must not wait for torch to
import (1.4 s) or the planner to calibrate (up to 30 s). Every training step holds at least

* its input batch, float32: ``batch x C x X x Y x Z`` of the stage (a slab stage: ``Z`` is the slab, padded);
* :data:`FLOOR_TENSORS` tensors of the U-Net's first width at that size (in bf16/fp16: 2 bytes a value): the
  first level's activations and their gradients (the traced steps hold 9.6 or more, over widths 4-128 to 32-512,
  with and without checkpointing, ``tests/test_memory_guard.py`` checks the bound against the trace);
* the process itself: what it holds now (``VmRSS``) - the process that plans is the one that will train.

A variant is bounded by its stage at full resolution: :data:`SLAB_VARIANTS` train one on slabs (``patch``; the
cascade's stage 2), ``full`` on the whole volume (the test suite checks the table against the variants' stages).
"""

from __future__ import annotations

from typing import Sequence

FLOOR_TENSORS = 4
SLAB_VARIANTS = ("patch", "cascade")  # variants with a slab stage at full resolution
FLOAT_BYTES = 4


def stage_voxels(variant: str, shape: Sequence[int], slab_size: int) -> int:
    """Voxels of one sample of ``variant``'s full-resolution stage: a slab (padded to ``slab_size``) or the
    volume.

    Example:
        >>> stage_voxels("patch", (1, 32, 32, 96), 16), stage_voxels("full", (1, 32, 32, 96), 16)
        (16384, 98304)
    """
    depth = int(slab_size) if variant in SLAB_VARIANTS else int(shape[3])
    return int(shape[1]) * int(shape[2]) * depth


def training_floor(variant: str, shape: Sequence[int], batch: int, slab_size: int, first_width: int,
                   precision: str = "fp32") -> int:  # fmt: skip
    """Bytes one training step of ``variant`` holds at least (without the process; see the module docstring).

    Example:
        >>> training_floor("patch", (1, 32, 32, 96), 10**8, 16, 8) > 10**15
        True
    """
    voxels = int(batch) * stage_voxels(variant, shape, slab_size)
    activation = FLOAT_BYTES if precision == "fp32" else 2
    return voxels * (int(shape[0]) * FLOAT_BYTES + FLOOR_TENSORS * int(first_width) * activation)


def process_now() -> int:
    """What this process holds now (its resident size; 0 where that cannot be read)."""
    from medseg_mem.memory import rss

    try:
        return rss.current_bytes()
    except (OSError, KeyError):
        return 0
