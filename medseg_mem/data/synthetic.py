"""The embedded default task "SyntheticRods": shows the thesis's central effect in minutes on a CPU.

``medseg-mem prepare`` without a task folder writes this MSD-layout task and prepares it. It is designed so
that the three U-Net variants differ for a reason the user can see:

* volumes are 32 x 32 x 96 voxels (1 mm, identity affine), one MRI-like channel;
* every case holds TWO rods parallel to the last (z) axis, with an identical disk cross-section (one radius
  per case, drawn in [3.0, 4.0] voxels so a rod still covers about a voxel after 0.3x downsampling) and
  identical intensity statistics, at random non-overlapping integer (x, y) positions (at least 2 voxels between the
  surfaces, at least 1 voxel from the border):

  - a LONG rod (label 1, ``long_rod``): length uniform in [48, 72] slices;
  - a SHORT rod (label 2, ``short_rod``): length uniform in [17, 22] slices;

  each starting at a random z so that it lies inside slices [2, 94).

Locally the rods look identical: only their length tells them apart, and the short rod is longer than 16
slices, so no 16-slice slab ever shows both of its ends. A slab-wise network (thesis 2.2.2) therefore cannot
separate the classes, while the full-volume U-Net and the cascade, whose first stage sees the whole
(downsampled) volume, can. Intensities have a case-specific scale (background ~ N(100, 15) and rods 80
brighter, times a factor drawn in [0.5, 3]), so intensity normalisation matters as on real MRI.

Each case uses a numpy Generator seeded from ``(seed, case index)``: the task is deterministic (identical
arrays, and identical file bytes since the gzip headers carry no time stamp) and takes seconds to write.

Example:
    >>> write_default_task(Path("medseg-work/Task00_SyntheticRods"), seed=0)  # doctest: +SKIP
    PosixPath('medseg-work/Task00_SyntheticRods')
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

from medseg_mem.errors import MedsegError

TASK_NAME = "SyntheticRods"
TASK_FOLDER = "Task00_SyntheticRods"
CLASS_NAMES = ("background", "long_rod", "short_rod")
RADIUS_RANGE = (3.0, 4.0)
LONG_RANGE = (48, 72)
SHORT_RANGE = (17, 22)
Z_RANGE = (2, 94)  # rods lie inside slices [2, 94)
SURFACE_GAP = 2
BORDER = 1
BACKGROUND_MEAN, BACKGROUND_STD, ROD_CONTRAST = 100.0, 15.0, 80.0
SCALE_RANGE = (0.5, 3.0)


def write_default_task(dest: Path, seed: int = 0, n_cases: int = 48, shape: Sequence[int] = (32, 32, 96)) -> Path:
    """Write the SyntheticRods MSD task to ``dest`` (atomically, replacing an earlier copy).

    Args:
        dest: the task folder to write, e.g. ``./medseg-work/Task00_SyntheticRods``.
        seed: the seed; the same seed gives identical arrays and files.
        n_cases: number of training cases.
        shape: volume shape (X, Y, Z); Z must leave room for the long rod inside [2, Z - 2).

    Returns:
        ``dest``.

    Raises:
        MedsegError: when ``dest`` holds something other than an earlier SyntheticRods task, or the
            arguments are out of range.
    """
    from medseg_mem.data.prepared import publish_folder, remove_path, staging_folder

    dest = Path(dest)
    shape = _checked_shape(shape, n_cases, seed)
    _check_replaceable(dest)
    staging = staging_folder(dest)
    try:
        (staging / "imagesTr").mkdir()
        (staging / "labelsTr").mkdir()
        ids = [f"rods_{index:03d}" for index in range(n_cases)]
        for index, case_id in enumerate(ids):
            image, label = make_case(seed, index, shape)
            _save_nifti(image, staging / "imagesTr" / f"{case_id}.nii.gz")
            _save_nifti(label, staging / "labelsTr" / f"{case_id}.nii.gz")
        (staging / "dataset.json").write_text(json.dumps(dataset_json(ids, seed), indent=1) + "\n", encoding="utf-8")
        publish_folder(staging, dest)
    except BaseException:
        remove_path(staging)
        raise
    return dest


def _checked_shape(shape: Sequence[int], n_cases: int, seed: int) -> Tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    min_side = 2 * (2 * RADIUS_RANGE[1] + BORDER) + SURFACE_GAP + 2
    if len(shape) != 3 or min(shape[:2]) < min_side or shape[2] < LONG_RANGE[1] + 2 * Z_RANGE[0]:
        raise MedsegError(f"shape must be (X, Y, Z) with X, Y >= {min_side:g} and Z >= 76; got {shape}")
    if n_cases < 1 or seed < 0:
        raise MedsegError(f"n_cases must be >= 1 and seed >= 0; got n_cases={n_cases}, seed={seed}")
    return shape


def _check_replaceable(dest: Path) -> None:
    """Refuse to replace a folder that is not an earlier SyntheticRods task (or empty)."""
    if not dest.exists():
        return
    meta = dest / "dataset.json"
    try:
        ours = dest.is_dir() and json.loads(meta.read_text(encoding="utf-8")).get("name") == TASK_NAME
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours and not (dest.is_dir() and not any(dest.iterdir())):
        raise MedsegError(
            f"{dest}: holds something other than the {TASK_NAME} default task; move it away or choose another --out"
        )


def dataset_json(case_ids: Sequence[str], seed: int) -> dict:
    """The MSD ``dataset.json`` of the task."""
    return {
        "name": TASK_NAME,
        "description": "Two rods per case, identical cross-section and intensity; only their length "
        "(long 48-72 slices, short 17-22 slices) tells them apart. Embedded default of medseg-mem.",
        "reference": f"generated by medseg-mem, seed {seed}",
        "licence": "CC0",
        "tensorImageSize": "3D",
        "modality": {"0": "MRI"},
        "labels": {str(i): name for i, name in enumerate(CLASS_NAMES)},
        "numTraining": len(case_ids),
        "numTest": 0,
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in case_ids],
        "test": [],
    }


def make_case(seed: int, index: int, shape: Sequence[int] = (32, 32, 96)) -> Tuple[np.ndarray, np.ndarray]:
    """Generate case ``index``: ``image`` float32 and ``label`` uint8 of ``shape`` (deterministic).

    Example:
        >>> image, label = make_case(0, 0)
        >>> image.shape, sorted(np.unique(label).tolist())
        ((32, 32, 96), [0, 1, 2])
    """
    rng = np.random.default_rng([seed, index])
    radius = float(rng.uniform(*RADIUS_RANGE))
    centres = rod_centres(rng, radius, shape[:2])
    label = np.zeros(shape, dtype=np.uint8)
    disks = [_disk(centre, radius, shape[:2]) for centre in centres]
    for value, (disk, lengths) in enumerate(zip(disks, (LONG_RANGE, SHORT_RANGE)), start=1):
        length = int(rng.integers(lengths[0], lengths[1] + 1))
        start = int(rng.integers(Z_RANGE[0], Z_RANGE[1] - length + 1))
        label[disk, start : start + length] = value
    scale = float(rng.uniform(*SCALE_RANGE))
    noise = rng.normal(BACKGROUND_MEAN, BACKGROUND_STD, size=shape)
    image = scale * (noise + ROD_CONTRAST * (label > 0))
    return image.astype(np.float32), label


def rod_centres(rng: np.random.Generator, radius: float, plane: Sequence[int]) -> List[Tuple[int, int]]:
    """Two integer (x, y) disk centres: disks inside the border margin, surfaces >= ``SURFACE_GAP`` apart.

    Integer centres make the two voxelised cross-sections exact translates of each other.
    """
    low = int(np.ceil(BORDER + radius))
    high = [int(np.floor(side - 1 - BORDER - radius)) for side in plane]
    while True:
        centres = [(int(rng.integers(low, high[0] + 1)), int(rng.integers(low, high[1] + 1))) for _ in range(2)]
        if np.hypot(centres[0][0] - centres[1][0], centres[0][1] - centres[1][1]) >= 2 * radius + SURFACE_GAP:
            return centres


def _disk(centre: Tuple[int, int], radius: float, plane: Sequence[int]) -> np.ndarray:
    x, y = np.meshgrid(np.arange(plane[0]), np.arange(plane[1]), indexing="ij")
    return (x - centre[0]) ** 2 + (y - centre[1]) ** 2 <= radius**2


def _save_nifti(array: np.ndarray, path: Path) -> None:
    """Save a NIfTI with identity affine; gzip without time stamp so the bytes are reproducible."""
    import nibabel as nib

    image = nib.Nifti1Image(array, np.eye(4))
    image.set_data_dtype(array.dtype)
    image.header.set_xyzt_units("mm")
    path.write_bytes(gzip.compress(image.to_bytes(), compresslevel=1, mtime=0))
