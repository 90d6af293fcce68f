"""Map a prediction back onto a scan's own voxel grid with MONAI ``Invertd`` (orientation, spacing and crop
undone), checking that the grid came back.

Without resampling (the default, as in the thesis) the inverse is a permutation, flips and zero padding,
which commute with the argmax: inverting the uint8 label map with nearest-neighbour interpolation gives the
very labels that inverting the K class probabilities and taking the argmax gives, at a fraction of the memory
(1 byte a voxel instead of 4 K). A run that resampled its scans interpolates back; there the probabilities are
inverted (trilinear) so that the output files are what they always were.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medseg_mem.core.errors import MedsegError

AFFINE_TOLERANCE = 1e-3  # mm; the restored grid must match the input's to this precision


def resamples(settings: dict) -> bool:
    """True when the run's preprocessing resamples scans (``Spacingd``), so undoing it interpolates."""
    return settings.get("spacing") is not None


def restore_labels(pipeline, data: dict, labels: torch.Tensor, scan: Path) -> np.ndarray:
    """Undo the pipeline's spatial steps on a label map ``(1, X, Y, Z)`` (nearest neighbour); uint8 labels.

    Raises:
        MedsegError: when the restored grid does not match the scan's (shape or affine).
    """
    restored = _invert(pipeline, data, labels, nearest=True)
    _check_restored(restored, data["image"].meta, scan)
    return restored.as_tensor()[0].numpy().astype(np.uint8)


def restore_grid(pipeline, data: dict, probabilities: torch.Tensor, scan: Path) -> np.ndarray:
    """Undo the pipeline's spatial steps on ``probabilities`` ``(K, X, Y, Z)`` (trilinear), then argmax.

    Raises:
        MedsegError: when the restored grid does not match the scan's (shape or affine).
    """
    restored = _invert(pipeline, data, probabilities, nearest=False)
    _check_restored(restored, data["image"].meta, scan)
    return restored.as_tensor().argmax(dim=0).numpy().astype(np.uint8)


def _invert(pipeline, data: dict, prediction: torch.Tensor, nearest: bool):
    """``prediction`` in the preprocessed grid, mapped back by ``Invertd`` as a MetaTensor."""
    from monai.data import MetaTensor
    from monai.transforms import Invertd

    inverter = Invertd("pred", transform=pipeline, orig_keys="image", nearest_interp=nearest)
    return inverter({"image": data["image"], "pred": MetaTensor(prediction)})["pred"]


def _check_restored(restored, meta: dict, scan: Path) -> None:
    shape = tuple(int(s) for s in np.asarray(meta["spatial_shape"]).ravel())
    affine = np.asarray(meta["original_affine"], dtype=np.float64)
    same_affine = np.allclose(np.asarray(restored.affine, dtype=np.float64), affine, atol=AFFINE_TOLERANCE)
    if tuple(restored.shape[1:]) != shape or not same_affine:
        raise MedsegError(f"{scan}: the prediction could not be mapped back onto the scan's grid {shape}")
