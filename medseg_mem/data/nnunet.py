"""Read and check an nnU-Net v2 dataset folder (``DatasetXXX_Name``) as it is, reporting ALL problems at once.

The layout (nnU-Net v2's ``dataset_format.md``)::

    dataset.json   {"channel_names": {"0": "T2", "1": "ADC"}, "labels": {"background": 0, "PZ": 1, "TZ": 2},
                    "numTraining": 32, "file_ending": ".nii.gz"}
    imagesTr/      <case>_0000<file_ending>, <case>_0001<file_ending>, ...: one 3D file per channel
    labelsTr/      <case><file_ending>

Cases are the identifiers of ``imagesTr/`` (hidden files such as ``.DS_Store`` skipped), as nnU-Net finds them;
every case needs a label and a file for each channel of ``channel_names``. The result is the same
:class:`~medseg_mem.data.task.MSDTask` an MSD folder gives, with each case's channel files in
:attr:`~medseg_mem.data.task.CaseEntry.channel_files`: MONAI's ``LoadImaged`` stacks them into the channel axis, so
from there on the MSD path (checks, transforms, the prepared format) does everything, and a dataset prepares to
the same arrays as its MSD twin with the channels in one 4D file.

Not read, each refused with one line: region-based labels (a label mapped to a list, nnU-Net's
``regions_class_order``), an ``ignore`` label (sparse annotation), a ``dataset`` key listing files elsewhere, and
file endings other than ``.nii.gz`` and ``.nii``. ``channel_names`` are kept as the modalities: ``CT`` is
normalised as CT (nnU-Net's ``CTNormalization``); every other name, ``noNorm`` and ``rescale_to_0_1`` included,
is z-scored over its nonzero voxels. ``imagesTs/`` (scans without labels) is not read; segment it with
``medseg-mem predict``.

Example:
    >>> task = read_task(Path("Dataset004_Hippocampus"))  # doctest: +SKIP
    >>> task.layout, task.class_names  # doctest: +SKIP
    ('nnunet-v2', ['background', 'Anterior', 'Posterior'])
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from medseg_mem.core.errors import DatasetError
from medseg_mem.data.task import MAX_LABEL, NIFTI_SUFFIXES, CaseEntry, MSDTask, numbered_names

LAYOUT = "nnunet-v2"
#: The channel number of a file name: ``<case>_0000<ending>``.
CHANNEL_DIGITS = 4
FOLDER_NAME = re.compile(r"Dataset\d{3}_(.+)")
UNSUPPORTED_KEYS = {
    "dataset": "a 'dataset' key listing files elsewhere is not read; lay the files out as imagesTr/ and labelsTr/",
}


def read_nnunet_dataset(task_dir: Path, meta: dict) -> MSDTask:
    """Check ``meta`` (the parsed ``dataset.json``) and the files of ``task_dir``; see the module docstring.

    Raises:
        DatasetError: listing every problem found: malformed or unsupported ``channel_names``, ``labels`` or
            ``file_ending``, keys that are not supported, missing folders, a case without a label or without a
            channel's file, a label without an image, files named unlike ``<case>_XXXX<file_ending>``.
    """
    problems: List[str] = []
    problems += [f"dataset.json: {text}" for key, text in UNSUPPORTED_KEYS.items() if key in meta]
    channels = numbered_names(meta.get("channel_names"), "channel_names", problems, example='{"0": "T2"}')
    class_names = label_names(meta.get("labels"), problems)
    ending = file_ending(meta.get("file_ending"), problems)
    cases = _cases(Path(task_dir).resolve(), len(channels), ending, problems) if ending and channels else []
    if problems:
        raise DatasetError(problems, where=str(task_dir))
    declared = meta.get("numTraining")
    declared = declared if isinstance(declared, int) and not isinstance(declared, bool) else None
    return MSDTask(Path(task_dir), dataset_name(task_dir, meta), class_names, channels, cases, declared, LAYOUT)


def dataset_name(task_dir: Path, meta: dict) -> str:
    """``dataset.json``'s ``name``, else the folder's name without ``DatasetXXX_``."""
    if isinstance(meta.get("name"), str) and meta["name"]:
        return meta["name"]
    match = FOLDER_NAME.fullmatch(Path(task_dir).name)
    return match.group(1) if match else Path(task_dir).name


def label_names(labels: object, problems: List[str]) -> List[str]:
    """Class names indexed by label value from nnU-Net's ``{"background": 0, "name": 1, ...}``; appends a problem
    for a region (a list), an ``ignore`` label, values that are not 0, 1, ..., K-1, or too many classes."""
    example = '{"background": 0, "tumour": 1}'
    if not isinstance(labels, dict) or not labels:
        problems.append(f"dataset.json: 'labels' must be a non-empty object like {example}; got {labels!r}")
        return []
    regions = [name for name, value in labels.items() if isinstance(value, (list, tuple))]
    if regions:
        problems.append(f"dataset.json: 'labels' {', '.join(map(repr, regions))} map to lists of labels (nnU-Net's "
                        "region-based training), which medseg-mem does not support; give each class one integer "
                        "label (and drop regions_class_order)")  # fmt: skip
        return []
    if "ignore" in labels:
        problems.append("dataset.json: 'labels' has an 'ignore' label (nnU-Net's sparse annotation), which "
                        "medseg-mem does not support; label every voxel and drop 'ignore'")  # fmt: skip
        return []
    values: Dict[int, str] = {}
    for name, value in labels.items():
        if not isinstance(value, int) or isinstance(value, bool):
            problems.append(f"dataset.json: 'labels' {name!r} is {value!r}, not an integer; use labels like {example}")
        elif value in values:
            problems.append(f"dataset.json: 'labels' {name!r} and {values[value]!r} share the value {value}")
        else:
            values[value] = str(name)
    if values and sorted(values) != list(range(len(values))):
        problems.append(f"dataset.json: 'labels' values must be 0, 1, ..., {len(values) - 1}; got {sorted(values)}")
    elif len(values) - 1 > MAX_LABEL:
        problems.append(f"dataset.json: 'labels' declares {len(values)} classes; at most {MAX_LABEL + 1} fit")
    return [values[value] for value in sorted(values)]


def file_ending(value: object, problems: List[str]) -> Optional[str]:
    """``dataset.json``'s ``file_ending`` when it is ``.nii.gz`` or ``.nii``; else a problem and ``None``."""
    if value in NIFTI_SUFFIXES:
        return str(value)
    problems.append(f"dataset.json: 'file_ending' is {value!r}; medseg-mem reads NIfTI only, '.nii.gz' or '.nii' "
                    "(convert the files, e.g. with SimpleITK, and set file_ending)")  # fmt: skip
    return None


def _files(folder: Path, ending: str) -> List[str]:
    """The names in ``folder`` ending in ``ending`` (``.nii`` does not take ``.nii.gz``), hidden ones skipped."""
    other = tuple(s for s in NIFTI_SUFFIXES if s != ending and s.endswith(ending))
    return sorted(p.name for p in folder.iterdir()
                  if p.name.endswith(ending) and not p.name.startswith(".") and not p.name.endswith(other))  # fmt: skip


def _cases(task_dir: Path, n_channels: int, ending: str, problems: List[str]) -> List[CaseEntry]:
    folders = {name: task_dir / name for name in ("imagesTr", "labelsTr")}
    missing = [name for name, folder in folders.items() if not folder.is_dir()]
    if missing:
        problems += [f"{name}/: folder not found; an nnU-Net v2 dataset holds imagesTr/ and labelsTr/"
                     for name in missing]  # fmt: skip
        return []
    channels = _channel_files(folders["imagesTr"], ending, n_channels, problems)
    labels = {name[: -len(ending)] for name in _files(folders["labelsTr"], ending)}
    problems += [f"labelsTr/{case}{ending}: has no image (imagesTr/{case}_0000{ending}); add it or remove the label"
                 for case in sorted(labels - set(channels))]  # fmt: skip
    if not channels and not labels:
        problems.append(f"imagesTr/: holds no <case>_0000{ending} files; add the training images")
    return [_case(task_dir, case, found, ending, n_channels, problems)
            for case, found in sorted(channels.items()) if _has_label(case, labels, ending, problems)]  # fmt: skip


def _channel_files(folder: Path, ending: str, n_channels: int, problems: List[str]) -> Dict[str, Dict[int, str]]:
    """``{case: {channel: file name}}`` of ``imagesTr/``; misnamed files and unknown channels are problems."""
    pattern = re.compile(rf"(.+)_(\d{{{CHANNEL_DIGITS}}}){re.escape(ending)}")
    found: Dict[str, Dict[int, str]] = {}
    for name in _files(folder, ending):
        match = pattern.fullmatch(name)
        if match is None:
            problems.append(f"imagesTr/{name}: not named <case>_XXXX{ending} (XXXX: the channel, 0000 for the "
                            "first); rename it")  # fmt: skip
        elif int(match.group(2)) >= n_channels:
            problems.append(f"imagesTr/{name}: channel {int(match.group(2))}, but dataset.json 'channel_names' "
                            f"declares {n_channels}; declare it or remove the file")  # fmt: skip
        else:
            found.setdefault(match.group(1), {})[int(match.group(2))] = name
    return found


def _has_label(case: str, labels, ending: str, problems: List[str]) -> bool:
    if case not in labels:
        problems.append(f"labelsTr/{case}{ending}: file not found for the image imagesTr/{case}_0000{ending}; add "
                        "the label or remove the case's images")  # fmt: skip
    return case in labels


def _case(task_dir: Path, case: str, found: Dict[int, str], ending: str, n_channels: int,
          problems: List[str]) -> CaseEntry:  # fmt: skip
    for channel in range(n_channels):
        if channel not in found:
            problems.append(f"imagesTr/{case}_{channel:0{CHANNEL_DIGITS}d}{ending}: file not found; case {case} "
                            f"needs one file per channel of 'channel_names' ({n_channels})")  # fmt: skip
    files: Tuple[Tuple[Path, str], ...] = tuple(
        (task_dir / "imagesTr" / found[c], f"imagesTr/{found[c]}") for c in sorted(found))
    label = task_dir / "labelsTr" / f"{case}{ending}"
    return CaseEntry(case, files[0][0], label, _shown(case, sorted(found), ending), f"labelsTr/{case}{ending}", files)


def _shown(case: str, channels: List[int], ending: str) -> str:
    """How messages and the manifest name a case's image: ``imagesTr/c_0000.nii.gz`` or
    ``imagesTr/c_{0000,0001}.nii.gz``."""
    numbers = [f"{c:0{CHANNEL_DIGITS}d}" for c in channels]
    return f"imagesTr/{case}_{numbers[0] if len(numbers) == 1 else '{' + ','.join(numbers) + '}'}{ending}"
