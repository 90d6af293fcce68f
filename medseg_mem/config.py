"""Small frozen dataclasses that group the options of each command, validated once on construction.

They know nothing of files or click: the CLI builds them, library functions take them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

from medseg_mem.errors import OptionError
from medseg_mem.names import DEFAULT_PREPARED, READER_NAMES

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
        seed: seed of the deterministic 60/20/20 train/val/test split (and of the embedded default).
        overwrite: replace an output folder that holds something else.
    """

    task_dir: Optional[Path] = None
    out_dir: Path = DEFAULT_PREPARED
    reader: str = "nibabel"
    spacing: Spacing = None
    crop_foreground: bool = False
    seed: int = 0
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.reader not in READER_NAMES:
            raise OptionError("--reader", f"must be one of {', '.join(READER_NAMES)}", self.reader)
        if isinstance(self.spacing, str) and self.spacing != "median":
            raise OptionError("--spacing", "must be 'median' or three positive numbers like 1,1,1.5", self.spacing)
        if isinstance(self.spacing, tuple) and (len(self.spacing) != 3 or min(self.spacing) <= 0):
            raise OptionError("--spacing", "must be three positive numbers like 1,1,1.5", self.spacing)
        if self.seed < 0:
            raise OptionError("--seed", "must be >= 0", self.seed)
