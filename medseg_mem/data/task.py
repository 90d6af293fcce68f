"""What a task folder of either layout is read into: :class:`MSDTask` and its :class:`CaseEntry` items, and the
``dataset.json`` helpers both readers share (:mod:`~medseg_mem.data.msd` for MSD folders,
:mod:`~medseg_mem.data.nnunet` for nnU-Net v2 ones)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

NIFTI_SUFFIXES = (".nii.gz", ".nii")
MAX_LABEL = 255  # prepared labels are uint8


@dataclass(frozen=True)
class CaseEntry:
    """One training pair listed in ``dataset.json``.

    Args:
        case_id: the image file name without ``.nii.gz`` / ``.nii``.
        image: absolute path of the image file (inside the task folder).
        label: absolute path of the label file.
        image_rel: the image path relative to the task folder (used in messages and the manifest).
        label_rel: the label path relative to the task folder.
        channel_files: nnU-Net v2 only: ``(absolute path, relative path)`` of each channel's file, in channel
            order (MONAI stacks them into the channel axis); empty when ``image`` holds every channel.
    """

    case_id: str
    image: Path
    label: Path
    image_rel: str
    label_rel: str
    channel_files: Tuple[Tuple[Path, str], ...] = ()

    def image_files(self) -> Tuple[Tuple[Path, str], ...]:
        """``(path, relative path)`` of every file the image is read from."""
        return self.channel_files or ((self.image, self.image_rel),)

    def image_source(self):
        """What ``LoadImaged`` reads: the image file, or the list of channel files to stack."""
        return [str(path) for path, _ in self.channel_files] if self.channel_files else str(self.image)


@dataclass(frozen=True)
class MSDTask:
    """A checked MSD task: its folder, name, classes, channels and training cases (and ``numTraining``, the count
    ``dataset.json`` declares, when it gives one); ``layout`` is ``"msd"`` or ``"nnunet-v2"`` (the folder it was
    read from)."""

    root: Path
    name: str
    class_names: List[str]
    modalities: List[str]
    cases: List[CaseEntry]
    num_training: Optional[int] = None
    layout: str = "msd"

    @property
    def channel_key(self) -> str:
        """The ``dataset.json`` key that names the channels in this layout."""
        return "channel_names" if self.layout == "nnunet-v2" else "modality"


def case_id_of(file_name: str) -> str:
    """Return the case id of an image file name: the name without ``.nii.gz`` or ``.nii``."""
    for suffix in NIFTI_SUFFIXES:
        if file_name.endswith(suffix):
            return file_name[: -len(suffix)]
    return file_name


def numbered_names(value: object, key: str, problems: List[str], example: str) -> List[str]:
    """Parse ``{"0": name, "1": name, ...}`` into a list indexed by the number; report gaps and bad keys."""
    if not isinstance(value, dict) or not value:
        problems.append(f"dataset.json: {key!r} must be a non-empty object like {example}; got {value!r}")
        return []
    numbered: Dict[int, str] = {}
    for raw_key, name in value.items():
        try:
            numbered[int(raw_key)] = str(name)
        except (TypeError, ValueError):
            problems.append(f"dataset.json: {key!r} key {raw_key!r} is not an integer; use keys like {example}")
    if numbered and sorted(numbered) != list(range(len(numbered))):
        problems.append(f"dataset.json: {key!r} keys must be 0, 1, ..., {len(numbered) - 1}; got {sorted(numbered)}")
    return [numbered[i] for i in sorted(numbered)]
