"""Options of ``medseg-mem prepare`` (:class:`PrepareConfig`), validated once on construction; free of torch, like
:mod:`medseg_mem.core.config`, which re-exports it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

from medseg_mem.core.errors import OptionError, check_choice
from medseg_mem.core.names import DEFAULT_PREPARED, READER_NAMES, SYNTHETIC_NAMES


Spacing = Union[Tuple[float, float, float], str, None]


@dataclass(frozen=True)
class PrepareConfig:
    """Options of ``medseg-mem prepare``.

    Args:
        task_dir: an MSD task folder; ``None`` writes and prepares the embedded default task.
        out_dir: where the prepared dataset appears (atomically).
        reader: ``"nibabel"`` or ``"itk"``, the MONAI image reader.
        spacing: ``None`` keeps the native voxel grid (thesis), ``"median"`` resamples to the dataset's median
            spacing (nnU-Net), or three positive floats in mm.
        crop_foreground: crop each case to the bounding box of its nonzero image voxels.
        seed: seed of the deterministic 60/20/20 train/val/test split (and of a generated task).
        overwrite: replace an output folder that holds something else.
        synthetic: with no ``task_dir``, which generated task to write and prepare: ``"rods"`` (the embedded
            default) or ``"brats-like"`` (a capacity task of BraTS-sized 4-channel volumes).
        cases: number of cases of a generated task (``None``: the task's default).
        shape: spatial shape ``(X, Y, Z)`` of a generated task's volumes (``None``: the task's default).
        splits: a ``splits.json`` to use instead of the seeded split (:mod:`medseg_mem.data.splits`).
    """

    task_dir: Optional[Path] = None
    out_dir: Path = DEFAULT_PREPARED
    reader: str = "nibabel"
    spacing: Spacing = None
    crop_foreground: bool = False
    seed: int = 0
    overwrite: bool = False
    synthetic: str = "rods"
    cases: Optional[int] = None
    shape: Optional[Tuple[int, int, int]] = None
    splits: Optional[Path] = None

    def __post_init__(self) -> None:
        check_choice("--reader", self.reader, READER_NAMES)
        if isinstance(self.spacing, str) and self.spacing != "median":
            raise OptionError("--spacing", "must be 'median' or three positive numbers like 1,1,1.5", self.spacing)
        if isinstance(self.spacing, tuple) and not (len(self.spacing) == 3 and all(math.isfinite(s) and s > 0
                                                                                   for s in self.spacing)):
            raise OptionError("--spacing", "must be three positive, finite numbers like 1,1,1.5", self.spacing)
        if self.seed < 0:
            raise OptionError("--seed", "must be >= 0", self.seed)
        check_choice("--synthetic", self.synthetic, SYNTHETIC_NAMES)
        if self.task_dir is not None and (self.cases is not None or self.shape is not None or self.synthetic != "rods"):
            rule = "only apply to a generated task (no TASK_DIR)"
            raise OptionError("--synthetic/--cases/--shape", rule, str(self.task_dir))
        if self.cases is not None and self.cases < 1:
            raise OptionError("--cases", "must be a positive number of cases", self.cases)
        if self.shape is not None and (len(self.shape) != 3 or min(self.shape) < 1):
            raise OptionError("--shape", "must be three positive sizes X,Y,Z like 240,240,155", self.shape)
