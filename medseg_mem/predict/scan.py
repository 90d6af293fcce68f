"""Reading one scan for ``predict``: the run's loading steps with its own reader, the checks a scan must pass,
and the metadata-only stand-in that lets the image itself be freed while ``Invertd`` still reads its trace."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from medseg_mem.data.normalize import slab_views
from medseg_mem.data.transforms import load_steps, make_reader
from medseg_mem.core.errors import MedsegError


def metadata_only(image):
    """An empty MetaTensor with ``image``'s metadata and transform trace (what ``Invertd`` reads of it)."""
    from monai.data import MetaTensor

    return MetaTensor(image.as_tensor().new_empty(0), meta=image.meta, applied_operations=image.applied_operations)


def load_scan(pipeline, reader: str, scan: Path) -> dict:
    """Run the pipeline's loading steps on ``scan`` with exactly the run's reader (no fallback reader).

    Raises:
        MedsegError: naming the scan, when it cannot be opened (permission denied ...), its header is impossible
            (dimensions, more voxels than memory) or it cannot be read as NIfTI.
    """
    from medseg_mem.data.headers import header_problems
    from medseg_mem.core.files.readable import open_failure

    problems = [p for p in [open_failure(scan)] if p] or header_problems(scan, str(scan))
    if problems:
        raise MedsegError(f"{problems[0]}; nothing was written for it")
    data = {"image": str(scan)}
    try:
        data = pipeline.transforms[0](data, make_reader(reader))
        for step in range(1, load_steps(with_label=False)):
            data = pipeline.transforms[step](data)
    except Exception as error:  # noqa: BLE001 - a corrupt file surfaces as many exception types
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise MedsegError(f"{scan}: cannot be read as NIfTI ({reason}); re-export or replace the file") from error
    return data


def preprocess_scan(pipeline, reader: str, scan: Path, modalities: Sequence[str]) -> dict:
    """Load and check ``scan`` (:func:`load_scan`, :func:`check_scan`), then apply the rest of the run's
    ``pipeline`` a step at a time: each step's input is freed once its output exists (``Compose`` would keep the
    loaded image to the end, one more float32 copy of the scan at the peak). What this holds at its peak is
    planned by :mod:`medseg_mem.memory.preprocessing`.

    Raises:
        MedsegError: naming the scan, when it cannot be read, does not match the run or is empty after cropping.
    """
    from monai.transforms import apply_transform

    data = load_scan(pipeline, reader, scan)
    check_scan(data["image"], scan, modalities)
    for step in pipeline.transforms[load_steps(with_label=False) :]:
        data = apply_transform(step, data, pipeline.map_items, pipeline.unpack_items)
    if min(data["image"].shape[1:]) == 0:
        raise MedsegError(f"{scan}: no nonzero voxels left after --crop-foreground; is the scan empty?")
    return data


def check_scan(image, scan: Path, modalities: Sequence[str]) -> None:
    """The loaded ``(C, X, Y, Z)`` image is 3D, finite and has one channel per modality of the run.

    Raises:
        MedsegError: naming the scan, what was found and what the run expects.
    """
    if image.ndim != 4:
        raise MedsegError(
            f"{scan}: has {image.ndim - 1} spatial dimension(s); expected a 3D scan (or 4D with channels last)"
        )
    if image.shape[0] != len(modalities):
        raise channel_mismatch(str(scan), image.shape[0], modalities, "the checkpoint",
                               "pass scans with those modalities, channels on the 4th axis")  # fmt: skip
    # a slab at a time: torch.isfinite makes full-size temporaries (abs() and two masks)
    if not all(bool(torch.isfinite(view).all()) for view in slab_views(image.as_tensor())):
        raise MedsegError(f"{scan}: contains NaN or infinite values; fix the scan before predicting")


def channel_mismatch(where: str, found: int, modalities: Sequence[str], expecter: str, fix: str) -> MedsegError:
    """The one-line error for images with ``found`` channels where ``expecter`` takes one per modality.

    Example:
        >>> str(channel_mismatch("a.nii.gz", 2, ["MRI"], "the checkpoint", "pass MRI scans"))
        'a.nii.gz: has 2 channel(s), the checkpoint expects 1 (MRI); pass MRI scans'
    """
    return MedsegError(f"{where}: has {found} channel(s), {expecter} expects {len(modalities)} "
                       f"({', '.join(modalities)}); {fix}")  # fmt: skip


def header_channels(scan: Path) -> int:
    """Channels of a 3D (1) or 4D channel-last NIfTI from its header, no voxel read; 0 when unknown."""
    from medseg_mem.data.headers import SPATIAL_DIMS, header_shape

    dims = header_shape(scan)
    return (dims[3] if len(dims) == 4 else 1) if len(dims) in SPATIAL_DIMS else 0
