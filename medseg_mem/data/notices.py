"""Warnings of ``prepare`` about input that is legal but will not do what the user likely wants.

Each function returns one line (``None`` when all is well); :func:`medseg_mem.data.prepare.prepare` passes it
to its ``warn`` callback (stderr in the CLI).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from medseg_mem.data import prepared


def tiny_task_notice(task_dir: Path, case_ids: Sequence[str], seed: int) -> Optional[str]:
    """Say up front that a task of fewer than :data:`~medseg_mem.data.prepared.MIN_SPLIT_CASES` cases splits
    with an empty validation and test split, which ``medseg-mem run`` refuses."""
    split = prepared.make_split(list(case_ids), seed)
    if split["val"] and split["test"]:
        return None
    sizes = "/".join(str(len(split[name])) for name in prepared.SPLITS)
    return (f"warning: {task_dir} lists {len(case_ids)} case(s); they split {sizes} (train/val/test) and "
            f"`medseg-mem run` needs a case in each split: add cases to dataset.json (at least "
            f"{prepared.MIN_SPLIT_CASES})")  # fmt: skip


def blank_image_notice(image, rel: str) -> Optional[str]:
    """Say that the image file ``rel`` holds only zeros (an empty export?); it is prepared all the same."""
    if np.any(np.asarray(image)):
        return None
    return f"warning: {rel}: every voxel is 0 (an empty or failed export?); it is prepared, but check the file"


def stale_notice(out_dir: Path, removed: Iterable[Path]) -> Optional[str]:
    """Say which partial folders of an interrupted earlier ``prepare`` of ``out_dir`` were removed."""
    names = [Path(p).name for p in removed]
    if not names:
        return None
    return (f"note: removed {len(names)} partial folder(s) left in {Path(out_dir).parent} by an interrupted "
            f"prepare of {Path(out_dir).name}: {', '.join(names)}")
