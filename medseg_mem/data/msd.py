"""Read and check a Medical Segmentation Decathlon (MSD) task folder, reporting ALL problems at once.

A folder whose ``dataset.json`` has nnU-Net v2's ``channel_names`` is read by :mod:`~medseg_mem.data.nnunet`
instead (:func:`read_task` tells them apart), into the same :class:`MSDTask`; everything after reading is shared.

An MSD task folder holds ``dataset.json``, ``imagesTr/`` and ``labelsTr/``. Cases are listed from
``dataset.json`` ``training`` (never by globbing: real archives hold stray ``.DS_Store`` / ``._*`` files).
Images are 3D, or 4D with the channels on the last axis, one channel per ``modality`` entry. Labels are 3D
with integer values declared in ``labels`` (they may be stored as float, as in Task04_Hippocampus).

Checking happens in two stages, both collecting every problem instead of stopping at the first one:

* :func:`read_task` checks ``dataset.json`` and the listed paths (present, inside the task folder);
* :func:`load_case` loads one case with the pipeline's loading steps and :func:`check_loaded` checks it
  (readable NIfTI, same grid for image and label, channel count, finite intensities, declared labels).

Example:
    >>> task = read_task(Path("Task04_Hippocampus"))  # doctest: +SKIP
    >>> task.class_names, len(task.cases)  # doctest: +SKIP
    (['background', 'Anterior', 'Posterior'], 260)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from medseg_mem.core.errors import DatasetError
from medseg_mem.core.files.readable import open_failure
from medseg_mem.data.nnunet import read_nnunet_dataset
from medseg_mem.data.task import MAX_LABEL, NIFTI_SUFFIXES, CaseEntry, MSDTask, case_id_of, numbered_names

REQUIRED_KEYS = ("training", "labels", "modality")


def read_task(task_dir: Path) -> MSDTask:
    """Read ``dataset.json`` of an MSD task folder and check every listed path.

    Args:
        task_dir: the task folder (``dataset.json``, ``imagesTr/``, ``labelsTr/``).

    Returns:
        the :class:`MSDTask` with one :class:`CaseEntry` per ``training`` entry, in the listed order.

    An nnU-Net v2 dataset folder (``dataset.json`` with ``channel_names``) is read by
    :func:`medseg_mem.data.nnunet.read_nnunet_dataset` into the same :class:`MSDTask`.

    Raises:
        DatasetError: listing every problem found: missing folder or ``dataset.json``, invalid JSON, missing or
            malformed ``training`` / ``labels`` / ``modality``, an empty training list, a listed file that does not
            exist or points outside the task folder, duplicate case ids.
    """
    task_dir = Path(task_dir)
    where = str(task_dir)
    if not task_dir.is_dir():
        hint = "pass an MSD task or nnU-Net v2 dataset folder holding dataset.json, imagesTr/ and labelsTr/"
        raise DatasetError([f"no such folder; {hint}"], where=where)
    meta = read_json(task_dir / "dataset.json", where)
    if "channel_names" in meta:
        return read_nnunet_dataset(task_dir, meta)
    _check_msd_keys(meta, where)
    problems: List[str] = []
    class_names = numbered_names(meta.get("labels"), "labels", problems, example='{"0": "background", "1": "tumour"}')
    modalities = numbered_names(meta.get("modality"), "modality", problems, example='{"0": "MRI"}')
    if len(class_names) - 1 > MAX_LABEL:
        problems.append(f"dataset.json: 'labels' declares {len(class_names)} classes; at most {MAX_LABEL + 1} fit")
    cases = _cases(task_dir, meta.get("training"), problems)
    if problems:
        raise DatasetError(problems, where=where)
    name = meta.get("name") if isinstance(meta.get("name"), str) and meta.get("name") else task_dir.name
    declared = meta.get("numTraining")
    declared = declared if isinstance(declared, int) and not isinstance(declared, bool) else None
    return MSDTask(task_dir, name, class_names, modalities, cases, declared)


def read_json(path: Path, where: str) -> dict:
    """The object in a task's ``dataset.json``; a missing, unreadable or malformed file is a :class:`DatasetError`."""
    if not path.is_file():
        raise DatasetError([f"{path.name}: file not found; an MSD task or nnU-Net v2 dataset folder needs a "
                            "dataset.json"], where=where)  # fmt: skip
    unreadable = open_failure(path, shown=path.name)
    if unreadable:
        raise DatasetError([unreadable], where=where)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError([f"{path.name}: invalid JSON ({error}); fix the syntax"], where=where) from error
    if not isinstance(meta, dict):
        raise DatasetError([f"{path.name}: must hold a JSON object; got {type(meta).__name__}"], where=where)
    return meta


def _check_msd_keys(meta: dict, where: str) -> None:
    missing = [key for key in REQUIRED_KEYS if key not in meta]
    if missing:
        keys = ", ".join(repr(k) for k in missing)
        raise DatasetError([f"dataset.json: missing key(s) {keys}; an MSD dataset.json needs {REQUIRED_KEYS} (an "
                            "nnU-Net v2 one 'channel_names', 'labels', 'numTraining', 'file_ending')"], where)


def _cases(task_dir: Path, training: object, problems: List[str]) -> List[CaseEntry]:
    if not isinstance(training, list):
        problems.append(f"dataset.json: 'training' must be a list of {{'image': ..., 'label': ...}}; got {training!r}")
        return []
    if not training:
        problems.append("dataset.json: 'training' is empty; list at least one {'image': ..., 'label': ...} pair")
        return []
    root = task_dir.resolve()
    cases: List[CaseEntry] = []
    seen: Dict[str, int] = {}
    for index, entry in enumerate(training):
        where = f"dataset.json: training[{index}]"
        if not isinstance(entry, dict) or not {"image", "label"} <= set(entry):
            problems.append(f"{where} must be an object with 'image' and 'label' paths; got {entry!r}")
            continue
        image = _listed_file(root, entry["image"], f"{where} image", problems)
        label = _listed_file(root, entry["label"], f"{where} label", problems)
        if image is None or label is None:
            continue
        case_id = case_id_of(image.name)
        if case_id in seen:
            problems.append(f"{where}: case id {case_id!r} repeats training[{seen[case_id]}]; list each case once")
            continue
        seen[case_id] = index
        cases.append(CaseEntry(case_id, image, label, _rel(image, root), _rel(label, root)))
    return cases


def _listed_file(root: Path, value: object, where: str, problems: List[str]) -> Optional[Path]:
    """Resolve one listed path; it must be a relative NIfTI path to an existing file inside ``root``."""
    if not isinstance(value, str) or not value:
        problems.append(f"{where} must be a relative path string; got {value!r}")
        return None
    if os.path.isabs(value):
        problems.append(f"{where} {value!r} is an absolute path; list files relative to the task folder")
        return None
    if not value.endswith(NIFTI_SUFFIXES):
        problems.append(f"{where} {value!r} is not a NIfTI file name; expected .nii.gz or .nii")
        return None
    path = (root / value).resolve()
    if not path.is_relative_to(root):
        problems.append(f"{where} {value!r} leads outside the task folder (to {path}); keep the data inside {root}")
        return None
    if path.is_dir():
        problems.append(f"{where} {value!r}: is a folder, not a NIfTI file; list the image file itself in dataset.json")
        return None
    if not path.is_file():
        problems.append(f"{where} {value!r}: file not found; fix the path in dataset.json or add the file")
        return None
    return path


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def load_case(pipeline, settings: dict, case: CaseEntry, task: MSDTask) -> Tuple[Optional[dict], List[str]]:
    """Run the loading steps of ``pipeline`` on one case and check the result.

    Each file is read with exactly the reader named in ``settings`` (no silent fallback to another reader,
    which could read a truncated file as garbage).

    Args:
        pipeline: the Compose from :func:`~medseg_mem.data.transforms.build_preprocessing` (``with_label=True``).
        settings: its preprocessing settings.
        case: the case to load.
        task: the task it belongs to (declared labels and modalities).

    Returns:
        ``(data, problems)``: the loaded channel-first dict (``None`` when unreadable) and the problems found.
    """
    from medseg_mem.data.headers import channel_file_problems, header_problems
    from medseg_mem.data.transforms import load_steps, make_reader

    data = {"image": case.image_source(), "label": str(case.label)}
    files = (*case.image_files(), (case.label, case.label_rel))
    problems = [p for p in (open_failure(path, shown=rel) for path, rel in files) if p]
    problems = problems or [p for path, rel in files for p in header_problems(path, rel)]
    problems = problems or channel_file_problems(case.channel_files)
    if problems:
        return None, problems
    for step, (key, rel) in enumerate((("image", case.image_rel), ("label", case.label_rel))):
        try:
            data = pipeline.transforms[step](data, make_reader(settings["reader"]))
        except Exception as error:  # noqa: BLE001 - a corrupt file surfaces as many exception types
            problems.append(f"{rel}: cannot be read as NIfTI ({_reason(error)}); re-export or replace the file")
    if problems:
        return None, problems
    for step in range(2, load_steps(with_label=True)):
        data = pipeline.transforms[step](data)
    problems += check_loaded(data, case, task)
    return (None if problems else data), problems


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def check_loaded(data: dict, case: CaseEntry, task: MSDTask) -> List[str]:
    """Check one loaded, channel-first case; return one message per problem (empty when fine).

    Checks: the image has one channel per ``modality``; the label is a single 3D volume on the image's grid
    (same shape and affine); the image holds no NaN/inf; every label value is an integer declared in
    ``labels``.
    """
    image, label = data["image"], data["label"]
    if image.ndim != 4:
        return [f"{case.image_rel}: has {image.ndim - 1} dimensions; expected a 3D or 4D (channel-last) image"]
    problems: List[str] = []
    if image.shape[0] != len(task.modalities):
        problems.append(
            f"{case.image_rel}: has {image.shape[0]} channel(s) but dataset.json {task.channel_key!r} names "
            f"{len(task.modalities)} ({', '.join(task.modalities)}); fix {task.channel_key!r} or the image"
        )
    problems += _grid_problems(image, label, case)
    problems += _finite_problems(image, case)
    problems += _label_problems(label, case, task)
    return problems


def _grid_problems(image, label, case: CaseEntry) -> List[str]:
    if label.ndim != 4 or label.shape[0] != 1:
        return [f"{case.label_rel}: has shape {_shape(label.shape)}; expected a single 3D label volume"]
    problems = []
    if tuple(image.shape[1:]) != tuple(label.shape[1:]):
        problems.append(
            f"{case.label_rel}: shape {_shape(label.shape[1:])} differs from its image {case.image_rel} "
            f"{_shape(image.shape[1:])}; image and label must share one voxel grid"
        )
    image_affine, label_affine = np.asarray(image.affine), np.asarray(label.affine)
    if not np.allclose(image_affine, label_affine, rtol=1e-4, atol=1e-3):
        problems.append(
            f"{case.label_rel}: affine differs from its image {case.image_rel} "
            f"(max difference {np.abs(image_affine - label_affine).max():.4g}); resample the label onto the image grid"
        )
    return problems


def _finite_problems(image, case: CaseEntry) -> List[str]:
    bad = int((~np.isfinite(np.asarray(image))).sum())
    if bad:
        return [f"{case.image_rel}: holds {bad} NaN/inf value(s); fix the image or drop the case from dataset.json"]
    return []


def _label_problems(label, case: CaseEntry, task: MSDTask) -> List[str]:
    values = np.unique(np.asarray(label))
    problems = []
    fractional = values[values != np.round(values)]
    if fractional.size:
        shown = ", ".join(f"{v:g}" for v in fractional[:5])
        problems.append(f"{case.label_rel}: holds non-integer label value(s) {shown}; labels must be whole numbers")
    declared = np.arange(len(task.class_names))
    undeclared = np.setdiff1d(values[values == np.round(values)], declared)
    if undeclared.size:
        shown = ", ".join(f"{v:g}" for v in undeclared[:10])
        problems.append(
            f"{case.label_rel}: label value(s) {shown} not declared in dataset.json 'labels' "
            f"(0..{len(task.class_names) - 1}); declare them or fix the label"
        )
    return problems


def _shape(shape) -> str:
    return "x".join(str(int(s)) for s in shape)
