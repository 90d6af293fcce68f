"""The capacity task "BratsLike": BraTS-sized synthetic brain-tumour volumes to test memory as a dataset grows.

``medseg-mem prepare --synthetic brats-like --cases N [--shape X,Y,Z]`` writes this task beside the output folder
and prepares it. It is not meant to be learned well: it exists so that ``run`` can be measured on 10, 40 or 400
cases of the real BraTS size (MSD Task01_BrainTumour: 240 x 240 x 155 voxels, 4 MRI channels) without a
download, and peak memory can be compared while only the number of cases changes. The design follows that use:

* MSD Task01_BrainTumour layout: one 4D float32 NIfTI per case with the channels LAST (X, Y, Z, 4), modalities
  FLAIR, T1w, t1gd, T2w, and a 3D uint8 label: 0 background, 1 edema, 2 non-enhancing tumor, 3 enhancing tumour;
* a skull-stripped "brain": an ellipsoid of tissue (zero outside, as after skull stripping, so the
  ``zscore_nonzero`` normalisation and ``--crop-foreground`` behave as on BraTS) with white matter inside, a grey
  matter band at its surface and a CSF-filled ventricle at its centre;
* a tumour of nested lumpy blobs at a random position and size per case: edema (outer shell), an enhancing rim,
  a non-enhancing (necrotic) core. The shells are at least one voxel thick along every axis, so each case holds
  every class, down to the smallest allowed shape;
* per channel, class-specific mean intensities (e.g. edema bright in FLAIR, the rim bright in t1gd, CSF bright in
  T2w), Gaussian noise and a case-specific scale, so intensity normalisation matters as on real MRI.

Speed and memory: one full-size case is 36 M float32 voxels (143 MB). Cases are generated one at a time in
float32 (no full-size float64 temporaries) and written as UNCOMPRESSED ``.nii``: noise does not compress, and
gzip would take most of the time. Each case uses a numpy Generator seeded from ``(seed, case index)``, so the task
is deterministic (identical arrays and identical file bytes) and any case can be regenerated alone.

Example:
    >>> write_brats_like_task(Path("medseg-work/Task90_BratsLike"), seed=0, n_cases=40)  # doctest: +SKIP
    PosixPath('medseg-work/Task90_BratsLike')
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Tuple

import numpy as np

from medseg_mem.data.generated import write_task
from medseg_mem.core.errors import MedsegError

TASK_NAME = "BratsLike"
TASK_FOLDER = "Task90_BratsLike"
DEFAULT_SHAPE = (240, 240, 155)
DEFAULT_CASES = 20
MODALITIES = ("FLAIR", "T1w", "t1gd", "T2w")
CLASS_NAMES = ("background", "edema", "non-enhancing tumor", "enhancing tumour")
MIN_SIDE = 20

#: Brain semi-axes as fractions of the volume side, per axis (BraTS: about 145 x 180 x 135 of 240 x 240 x 155).
BRAIN_FRACTIONS = ((0.27, 0.33), (0.34, 0.40), (0.38, 0.44))
BRAIN_JITTER = 0.03  # brain centre offset from the volume centre, fraction of the side
GREY_BAND = 0.82  # normalised brain radius beyond which tissue is grey matter
VENTRICLE_FRACTION = (0.12, 0.18)  # ventricle semi-axes / brain semi-axes (times VENTRICLE_ASPECT)
VENTRICLE_ASPECT = (1.0, 1.6, 1.0)
#: Tumour outer semi-axes as fractions of the smallest brain semi-axis, and their floor in voxels.
TUMOUR_FRACTION = (0.25, 0.50)
MIN_TUMOUR_AXIS = 6.0
ENHANCING_RANGE = (0.68, 0.76)  # outer radius of the enhancing rim / outer radius of the edema
CORE_RANGE = (0.38, 0.48)  # radius of the non-enhancing core / outer radius of the edema
LUMP = 0.15  # direction-dependent radius change of the tumour: radii vary within 1 +- LUMP
TUMOUR_ROOM = 0.9  # the tumour's bounding sphere stays within this normalised brain radius (where it fits)

#: Tissue codes of the generator; the label of a code is ``LABEL_OF_TISSUE[code]``.
OUTSIDE, WHITE, GREY, CSF, EDEMA, NON_ENHANCING, ENHANCING = range(7)
LABEL_OF_TISSUE = np.array([0, 0, 0, 0, 1, 2, 3], dtype=np.uint8)
#: Mean intensity per channel (rows: FLAIR, T1w, t1gd, T2w) and tissue code (columns, as above).
MEANS = np.array(
    [
        [0.0, 90.0, 110.0, 30.0, 180.0, 120.0, 150.0],
        [0.0, 120.0, 90.0, 40.0, 80.0, 60.0, 95.0],
        [0.0, 120.0, 90.0, 40.0, 85.0, 60.0, 200.0],
        [0.0, 80.0, 100.0, 200.0, 170.0, 190.0, 130.0],
    ],
    dtype=np.float32,
)
NOISE_STD = 8.0
MIN_INTENSITY = 1.0  # brain voxels are clipped to at least this (before the scale): MRI is positive
SCALE_RANGE = (0.5, 3.0)


def write_brats_like_task(
    dest: Path, seed: int = 0, n_cases: int = DEFAULT_CASES, shape: Sequence[int] = DEFAULT_SHAPE,
    channels: int = len(MODALITIES),
) -> Path:
    """Write the BratsLike MSD task to ``dest`` (atomically, replacing an earlier copy).

    Args:
        dest: the task folder to write, e.g. ``./medseg-work/Task90_BratsLike``.
        seed: the seed; the same seed gives identical arrays and files.
        n_cases: number of training cases.
        shape: spatial shape (X, Y, Z) of every case, each side >= ``MIN_SIDE`` (20).
        channels: how many of the modalities (FLAIR, T1w, t1gd, T2w, in that order) each case holds, 1-4; a
            case's first channels are the same whatever the count.

    Returns:
        ``dest``.

    Raises:
        MedsegError: when ``dest`` holds something other than an earlier BratsLike task, or the arguments are
            out of range.

    Example:
        >>> task = write_brats_like_task(Path("work/Task90_BratsLike"), n_cases=4, shape=(24, 24, 20))  # doctest: +SKIP
        >>> sorted(p.name for p in (task / "imagesTr").iterdir())  # doctest: +SKIP
        ['brats_000.nii', 'brats_001.nii', 'brats_002.nii', 'brats_003.nii']
    """
    shape = checked_shape(shape)
    if n_cases < 1 or seed < 0:
        raise MedsegError(f"n_cases (--cases) must be >= 1 and seed >= 0; got n_cases={n_cases}, seed={seed}")
    if not 1 <= channels <= len(MODALITIES):
        raise MedsegError(f"channels of the {TASK_NAME} task must be 1 to {len(MODALITIES)}; got {channels!r}")
    ids = [f"brats_{index:03d}" for index in range(n_cases)]
    meta = dataset_json(ids, seed, channels)
    return write_task(dest, TASK_NAME, ids, lambda i: make_case(seed, i, shape, channels), ".nii", meta)


def checked_shape(shape: Sequence[int]) -> Tuple[int, int, int]:
    """Return ``shape`` as three ints, each >= ``MIN_SIDE``.

    Raises:
        MedsegError: naming ``--shape``, the rule and the value otherwise.
    """
    try:
        sides = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        sides = ()
    if len(sides) != 3 or min(sides) < MIN_SIDE:
        raise MedsegError(
            f"shape (--shape) of the {TASK_NAME} task must be three sizes X,Y,Z, each >= {MIN_SIDE}; got {shape!r}"
        )
    return sides


def dataset_json(case_ids: Sequence[str], seed: int, channels: int = len(MODALITIES)) -> dict:
    """The MSD ``dataset.json`` of the task (Task01_BrainTumour's modalities and labels, uncompressed files)."""
    return {
        "name": TASK_NAME,
        "description": "Synthetic BraTS-sized brain tumour volumes (skull-stripped ellipsoid brain, nested tumour "
        "blobs) for memory and capacity checks; not real anatomy. Generated by medseg-mem.",
        "reference": f"generated by medseg-mem, seed {seed}",
        "licence": "CC0",
        "tensorImageSize": "4D",
        "modality": {str(i): name for i, name in enumerate(MODALITIES[:channels])},
        "labels": {str(i): name for i, name in enumerate(CLASS_NAMES)},
        "numTraining": len(case_ids),
        "numTest": 0,
        "training": [{"image": f"./imagesTr/{c}.nii", "label": f"./labelsTr/{c}.nii"} for c in case_ids],
        "test": [],
    }


def make_case(
    seed: int, index: int, shape: Sequence[int] = DEFAULT_SHAPE, channels: int = len(MODALITIES)
) -> Tuple[np.ndarray, np.ndarray]:
    """Generate case ``index``: ``image`` float32 (X, Y, Z, C) and ``label`` uint8 (X, Y, Z) (deterministic).

    Args:
        seed: the task seed.
        index: the case index; the generator is seeded from ``(seed, index)``.
        shape: spatial shape (X, Y, Z).
        channels: C, the first ``channels`` modalities (the others are drawn and dropped, so a case's channels
            do not depend on how many are kept).

    Returns:
        ``(image, label)``, both Fortran-ordered (the NIfTI on-disk order).

    Example:
        >>> image, label = make_case(0, 0, (24, 24, 20))
        >>> image.shape, image.dtype.name, sorted(np.unique(label).tolist())
        ((24, 24, 20, 4), 'float32', [0, 1, 2, 3])
    """
    shape = checked_shape(shape)
    rng = np.random.default_rng([seed, index])
    tissue = tissue_map(rng, shape)
    image = render(rng, tissue, channels)
    return image, LABEL_OF_TISSUE[tissue]


def tissue_map(rng: np.random.Generator, shape: Tuple[int, int, int]) -> np.ndarray:
    """Draw the anatomy of one case: a uint8 (X, Y, Z) map of tissue codes (``OUTSIDE`` ... ``ENHANCING``)."""
    sides = np.array(shape, dtype=np.float64)
    centre = (sides - 1) / 2 + rng.uniform(-BRAIN_JITTER, BRAIN_JITTER, 3) * sides
    axes = np.array([rng.uniform(*f) for f in BRAIN_FRACTIONS]) * sides
    radius2 = _ellipsoid_distance2(shape, centre, axes)
    tissue = np.zeros(shape, dtype=np.uint8, order="F")
    tissue[radius2 < 1] = WHITE
    tissue[(radius2 >= GREY_BAND**2) & (radius2 < 1)] = GREY
    del radius2
    _paint_ventricle(rng, tissue, centre, axes)
    _paint_tumour(rng, tissue, centre, axes)
    return tissue


def _ellipsoid_distance2(shape: Sequence[int], centre: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """Squared normalised distance ``sum(((p - centre) / axes) ** 2)`` over the grid ``shape`` (float32)."""
    terms = [
        ((np.arange(n, dtype=np.float32) - np.float32(c)) / np.float32(a)) ** 2 for n, c, a in zip(shape, centre, axes)
    ]
    out = np.empty(tuple(shape), dtype=np.float32, order="F")
    np.add(terms[0][:, None, None], terms[1][None, :, None], out=out)
    out += terms[2][None, None, :]
    return out


def _paint_ventricle(rng: np.random.Generator, tissue: np.ndarray, centre: np.ndarray, axes: np.ndarray) -> None:
    """A CSF ellipsoid at the brain centre (cropped to its bounding box; may vanish at tiny shapes)."""
    semi = axes * rng.uniform(*VENTRICLE_FRACTION) * np.array(VENTRICLE_ASPECT)
    box = _box(centre, semi, tissue.shape)
    local = _ellipsoid_distance2([s.stop - s.start for s in box], centre - [s.start for s in box], semi)
    tissue[box][local < 1] = CSF


def _paint_tumour(
    rng: np.random.Generator, tissue: np.ndarray, brain_centre: np.ndarray, brain_axes: np.ndarray
) -> None:
    """Nested lumpy blobs: non-enhancing core inside an enhancing rim inside edema.

    The outer semi-axes are at least ``MIN_TUMOUR_AXIS`` voxels and the shell radii differ by at least 0.2 of them,
    so with the lumps (radii times 1 +- ``LUMP``) every shell is at least one voxel thick along each axis from the
    (integer) centre, which is always non-enhancing core: every class is present. The tumour's bounding sphere
    stays inside ``TUMOUR_ROOM`` of the brain where it fits; at tiny shapes it may bulge out and then counts as
    brain (it always lies inside the volume).
    """
    b_min = float(brain_axes.min())
    semi = np.maximum(rng.uniform(*TUMOUR_FRACTION, 3) * b_min, MIN_TUMOUR_AXIS)
    core, rim = rng.uniform(*CORE_RANGE), rng.uniform(*ENHANCING_RANGE)
    directions = _unit(rng.standard_normal((3, 3)))
    weights = rng.uniform(-1.0, 1.0, 3)
    reach = float(semi.max()) * (1 + LUMP)
    room = max(0.0, TUMOUR_ROOM - (reach + 1) / b_min)
    offset = _unit(rng.standard_normal(3)) * room * rng.uniform() ** (1 / 3)
    centre = np.round(brain_centre + offset * brain_axes)
    box = _box(centre, np.full(3, reach), tissue.shape)
    grids = np.meshgrid(*[(np.arange(s.start, s.stop) - c) / a for s, c, a in zip(box, centre, semi)], indexing="ij")
    q = np.stack(grids, axis=-1)  # normalised offsets, small (the tumour box only)
    distance = np.linalg.norm(q, axis=-1)
    u = q / np.maximum(distance, 1e-12)[..., None]
    lumps = sum(w * (1.5 * (u @ v) ** 2 - 0.5) for w, v in zip(weights, directions)) / 3  # in [-1, 1]
    radius = distance / (1 + LUMP * lumps)
    region = tissue[box]
    region[radius < 1] = EDEMA
    region[radius < rim] = ENHANCING
    region[radius < core] = NON_ENHANCING


def _unit(vectors: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norm, 1e-12)


def _box(centre: np.ndarray, semi: np.ndarray, shape: Sequence[int]) -> Tuple[slice, ...]:
    """Index box holding the ellipsoid (``centre``, ``semi``), clipped to the volume."""
    low = np.maximum(np.floor(centre - semi).astype(int), 0)
    high = np.minimum(np.ceil(centre + semi).astype(int) + 1, shape)
    return tuple(slice(int(lo), int(hi)) for lo, hi in zip(low, high))


def render(rng: np.random.Generator, tissue: np.ndarray, channels: int = len(MODALITIES)) -> np.ndarray:
    """Intensities of the first ``channels`` modalities: class means plus noise, times a per-channel scale; zero
    outside the brain.

    Noise is drawn for the brain voxels only (about a fifth of the volume), which keeps a full-size case fast.

    Args:
        rng: the case's generator.
        tissue: uint8 (X, Y, Z) tissue codes from :func:`tissue_map`.
        channels: how many modalities, 1-4.

    Returns:
        float32 (X, Y, Z, channels), Fortran-ordered, channels last.
    """
    scales = rng.uniform(*SCALE_RANGE, len(MODALITIES)).astype(np.float32)[:channels]  # all drawn: same stream
    image = np.zeros(tissue.shape + (channels,), dtype=np.float32, order="F")
    inside = tissue != OUTSIDE
    codes = tissue[inside]
    for channel, scale in enumerate(scales):
        values = rng.standard_normal(codes.size, dtype=np.float32)
        values *= np.float32(NOISE_STD)
        values += MEANS[channel][codes]
        np.maximum(values, MIN_INTENSITY, out=values)  # positive inside, so "nonzero" is exactly the brain
        values *= scale
        image[..., channel][inside] = values
    return image
