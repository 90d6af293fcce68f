"""Warnings of ``prepare`` about input that is legal but will not do what the user likely wants.

Each function returns one line (``None`` when all is well); :func:`medseg_mem.data.prepare.prepare` passes it
to its ``warn`` callback (stderr in the CLI).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set

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


def count_notice(task_dir: Path, declared: Optional[int], listed: int, layout: str = "msd") -> Optional[str]:
    """Say that ``dataset.json``'s ``numTraining`` differs from the cases its ``training`` list names (an nnU-Net v2
    dataset: that ``imagesTr/`` holds); the cases found are what is prepared."""
    if declared is None or declared == listed:
        return None
    found, fix = ("imagesTr/ holds", "add the missing cases") if layout == "nnunet-v2" else ("'training' lists",
                                                                                              "list the missing cases")
    return (f"note: {Path(task_dir) / 'dataset.json'}: numTraining says {declared} but {found} {listed} "
            f"case(s); the {listed} found are prepared (fix numTraining, or {fix})")


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


#: What a class absent from every case of a split means for that split.
ABSENT_MEANS = {
    "train": "the network cannot learn them",
    "val": "validation cannot score them (best-checkpoint choice goes by the other classes)",
    "test": "their test Dice stays empty (no case to score)",
}


def label_values(label) -> Set[int]:
    """The foreground label values present in ``label``."""
    return {int(v) for v in np.unique(np.asarray(label)) if v > 0}


def lost_class_notice(rel: str, lost: Set[int], class_names: Sequence[str], settings: dict) -> Optional[str]:
    """Say that preprocessing (resampling, cropping) removed every voxel of the classes ``lost`` from a case."""
    if not lost:
        return None
    names = ", ".join(class_names[v] for v in sorted(lost))
    spacing = settings.get("spacing")
    how = f"resampling to {','.join(f'{s:g}' for s in spacing)} mm" if spacing is not None else "preprocessing"
    return (f"warning: {rel}: {how} removed every voxel of class(es) {names}, present in the file; that case "
            "no longer holds them: use a finer --spacing (or keep the native grid)")


def absent_class_notices(split: Dict[str, List[str]], present: Dict[str, Set[int]],
                         class_names: Sequence[str]) -> List[str]:  # fmt: skip
    """One warning per split in which no case holds some foreground class (after preprocessing)."""
    lines = []
    for name in prepared.SPLITS:
        cases = split.get(name, [])
        held = set().union(*(present.get(case, set()) for case in cases)) if cases else set()
        absent = [class_names[v] for v in range(1, len(class_names)) if v not in held]
        if cases and absent:
            lines.append(f"warning: no case of the {name} split ({len(cases)} case(s)) holds class(es) "
                         f"{', '.join(absent)}: {ABSENT_MEANS[name]}; check the labels, or add cases that hold them")
    return lines
