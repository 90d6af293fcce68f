"""Writing a generated task in MSD layout: what the embedded default and the capacity task share.

A generated task is written case by case into a hidden staging folder and renamed into place when complete
(:func:`~medseg_mem.core.files.atomic.publish_folder`), so an interrupted write never leaves half a task; only an
earlier copy of the same generated task (or an empty folder) may be replaced.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence, Tuple

import numpy as np

from medseg_mem.core.errors import MedsegError

CaseMaker = Callable[[int], Tuple[np.ndarray, np.ndarray]]


def check_replaceable(dest: Path, task_name: str) -> None:
    """Refuse to replace ``dest`` unless it is absent, empty, or an earlier copy of the task ``task_name``.

    Raises:
        MedsegError: naming the folder and what to do instead.
    """
    if not dest.exists():
        return
    try:
        meta = json.loads((dest / "dataset.json").read_text(encoding="utf-8")) if dest.is_dir() else {}
        ours = meta.get("name") == task_name
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours and not (dest.is_dir() and not any(dest.iterdir())):
        raise MedsegError(
            f"{dest}: holds something other than the generated {task_name} task; move it away or choose another --out"
        )


def write_task(dest: Path, task_name: str, case_ids: Sequence[str], make_case: CaseMaker, suffix: str,
               dataset: dict) -> Path:  # fmt: skip
    """Write ``imagesTr``/``labelsTr`` (one case in memory at a time) and ``dataset.json``, atomically.

    Args:
        dest: the task folder.
        task_name: the task's ``dataset.json`` name (an earlier copy of it may be replaced).
        case_ids: one id per case; case ``i`` is ``make_case(i) -> (image, label)``.
        suffix: ``.nii.gz`` or ``.nii``.
        dataset: the ``dataset.json`` content.

    Raises:
        MedsegError: when ``dest`` holds something else (see :func:`check_replaceable`).
    """
    from medseg_mem.core.files.atomic import publish_folder, remove_path, staging_folder

    dest = Path(dest)
    check_replaceable(dest, task_name)
    staging = staging_folder(dest)
    try:
        (staging / "imagesTr").mkdir()
        (staging / "labelsTr").mkdir()
        for index, case_id in enumerate(case_ids):
            image, label = make_case(index)
            save_nifti(image, staging / "imagesTr" / f"{case_id}{suffix}")
            save_nifti(label, staging / "labelsTr" / f"{case_id}{suffix}")
            del image, label
        (staging / "dataset.json").write_text(json.dumps(dataset, indent=1) + "\n", encoding="utf-8")
        publish_folder(staging, dest)
    except BaseException:
        remove_path(staging)
        raise
    return dest


def save_nifti(array: np.ndarray, path: Path) -> None:
    """Save ``array`` as NIfTI (identity affine, 1 mm), reproducibly: gzip without a time stamp for ``.nii.gz``."""
    import gzip

    import nibabel as nib

    image = nib.Nifti1Image(array, np.eye(4))
    image.set_data_dtype(array.dtype)
    image.header.set_xyzt_units("mm")
    if str(path).endswith(".gz"):
        Path(path).write_bytes(gzip.compress(image.to_bytes(), compresslevel=1, mtime=0))
    else:
        image.to_filename(str(path))
