"""Small synthetic scans for the out-of-core engine's tests: random affines (tilted, oblique, flipped and permuted
axes, anisotropic), integer voxels with ``scl_slope``/``scl_inter`` or float voxels, zero borders (the
nonzero statistics and ``--crop-foreground`` see them), 3D or 4D channel-last, ``.nii`` or ``.nii.gz``.

Imported by test modules as ``streaming_scans`` (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
import torch

from medseg_mem.data.transforms import build_preprocessing, make_settings

CT_STATISTICS = {"lower": -100.0, "upper": 600.0, "mean": 150.0, "std": 200.0}


def small_rotation(rng: np.random.Generator, degrees: float) -> np.ndarray:
    """A rotation by up to ``degrees`` about each axis."""
    angles = np.deg2rad(rng.uniform(-degrees, degrees, 3))
    (cx, cy, cz), (sx, sy, sz) = np.cos(angles), np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rx @ ry @ rz


def random_affine(rng: np.random.Generator, tilt: float = 12.0) -> np.ndarray:
    """Axes permuted and flipped at random, tilted by up to ``tilt`` degrees, spacing 0.6-2.5 mm per axis."""
    signed = np.eye(3)[rng.permutation(3)] * rng.choice([-1.0, 1.0], 3)
    affine = np.eye(4)
    affine[:3, :3] = small_rotation(rng, tilt) @ signed @ np.diag(rng.uniform(0.6, 2.5, 3))
    affine[:3, 3] = rng.normal(size=3) * 20
    return affine


def write_scan(path: Path, rng: np.random.Generator, shape: Sequence[int], channels: int = 1, scaled: bool = True,
               affine: np.ndarray = None) -> Path:  # fmt: skip
    """A scan of random intensities with zero borders; int16 with slope 0.5 / intercept 10 when ``scaled``."""
    full = tuple(shape) + ((channels,) if channels > 1 else ())
    data = rng.integers(-200, 800, size=full).astype(np.int16 if scaled else np.float32)
    data[:2] = 0
    data[:, -3:] = 0
    image = nib.Nifti1Image(data, random_affine(rng) if affine is None else affine)
    if scaled:
        image.header.set_slope_inter(0.5, 10)
    nib.save(image, str(path))
    return Path(path)


def settings_for(modalities: Sequence[str], spacing=None, crop: bool = False) -> dict:
    """Preprocessing settings with the CT statistics filled in."""
    settings = make_settings(list(modalities), spacing=spacing, crop_foreground=crop)
    for norm in settings["normalization"]:
        if norm["scheme"] == "ct":
            norm.update(CT_STATISTICS)
    return settings


def in_memory(path: Path, settings: dict):
    """The whole image as ``build_preprocessing`` makes it (a MetaTensor)."""
    return build_preprocessing(settings, with_label=False)({"image": str(path)})["image"]


def streamed(stream, depth: int) -> torch.Tensor:
    """The stream's slabs of ``depth`` slices, concatenated."""
    return torch.cat([slab for _, slab in stream.slabs(depth)], dim=-1)
