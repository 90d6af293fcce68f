"""Files of ``medseg-mem predict``: which scans to read, where each label map goes, and how it is written.

Inputs are NIfTI files (``*.nii``, ``*.nii.gz``, 3D or 4D channel-last) or folders of them (not recursive,
sorted, hidden files skipped). Each input ``<name>.nii[.gz]`` gets ``<out>/<name>_seg.nii.gz``: uint8 labels
in the input's own voxel grid, written with a copy of the input's header (so shape, affine, qform and sform
are those of the input and the map overlays in 3D Slicer or ITK-SNAP), atomically (temp file, then rename).
While a slab-wise run segments a scan, the preprocessed image waits in an anonymous temporary file
(:class:`SpilledImage`, in ``$TMPDIR``) and is read back one slab at a time, so it is not resident next to the
network's activations.

Example:
    >>> scans = collect_inputs([Path("scans/")])  # doctest: +SKIP
    >>> jobs = plan_outputs(scans, Path("predictions"), overwrite=False)  # doctest: +SKIP
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch

from medseg_mem.core.files.atomic import replacing
from medseg_mem.data.normalize import slab_views
from medseg_mem.core.errors import MedsegError
from medseg_mem.inference.source import SlabSource

NIFTI_SUFFIXES = (".nii.gz", ".nii")
OUTPUT_SUFFIX = "_seg.nii.gz"
NIFTI_INTENT_LABEL = "label"
#: The header ``descrip`` of every label map ``predict`` writes (how :func:`written_here` knows its own files).
DESCRIPTION = b"medseg-mem segmentation"
SHOWN = 5  # names listed in an error before "..."


def is_nifti(path: Path) -> bool:
    """True for a ``*.nii`` or ``*.nii.gz`` name (case-insensitive) that is not hidden."""
    name = Path(path).name
    return not name.startswith(".") and name.lower().endswith(NIFTI_SUFFIXES)


def scan_name(path: Path) -> str:
    """``case_001.nii.gz`` -> ``case_001`` (the NIfTI suffix removed)."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def output_path(out_dir: Path, scan: Path) -> Path:
    """Where the label map of ``scan`` is written: ``<out_dir>/<name>_seg.nii.gz``."""
    return Path(out_dir) / f"{scan_name(scan)}{OUTPUT_SUFFIX}"


def collect_inputs(inputs: Sequence[Path], skipped: Optional[List[Path]] = None) -> List[Path]:
    """Expand ``inputs`` (NIfTI files and folders of them) into a list of scans, in the order given.

    A folder's label maps that medseg-mem wrote (``*_seg.nii.gz`` marked as its segmentation: an earlier
    ``predict`` into that folder) are outputs, not scans: they are left out (and appended to ``skipped``).

    Args:
        inputs: files and folders named by the user.
        skipped: receives the label maps left out of the folders.

    Raises:
        MedsegError: nothing given, a path that does not exist, a file that is not NIfTI or is a label map
            medseg-mem wrote, or a folder without scans; the message names the path.
    """
    if not inputs:
        raise MedsegError("INPUT: give at least one NIfTI file or folder of NIfTI files to segment")
    scans: List[Path] = []
    for item in map(Path, inputs):
        scans += _folder_scans(item, skipped if skipped is not None else []) if item.is_dir() else [_checked_file(item)]
    return _unique(scans)


def written_here(path: Path) -> bool:
    """True for a label map ``predict`` wrote: named ``*_seg.nii.gz``, its header marked as medseg-mem's."""
    import nibabel as nib

    if not Path(path).name.endswith(OUTPUT_SUFFIX):
        return False
    try:
        return bytes(nib.load(str(path)).header["descrip"]).rstrip(b"\0") == DESCRIPTION
    except Exception:  # noqa: BLE001 - an unreadable file is not ours; the reader reports it as a scan
        return False


def _unique(paths: Sequence[Path]) -> List[Path]:
    """``paths`` without repeats of the same file (first mention kept)."""
    seen, unique = set(), []
    for path in paths:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            unique.append(path)
    return unique


def _folder_scans(folder: Path, skipped: List[Path]) -> List[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p))
    ours = [p for p in files if written_here(p)]
    skipped += ours
    scans = [p for p in files if p not in ours]
    if not scans:
        held = f" (only {len(ours)} label map(s) medseg-mem wrote)" if ours else ""
        raise MedsegError(f"INPUT {folder}: the folder holds no *.nii or *.nii.gz scans{held}; point at the scans' "
                          "folder")  # fmt: skip
    return scans


def _checked_file(path: Path) -> Path:
    if not path.exists():
        raise MedsegError(f"INPUT {path}: no such file or folder")
    if not is_nifti(path):
        raise MedsegError(f"INPUT {path}: not a NIfTI file (*.nii or *.nii.gz); convert it first, e.g. with SimpleITK")
    if written_here(path):
        raise MedsegError(f"INPUT {path}: a label map medseg-mem wrote (an earlier predict's output), not a scan; "
                          "drop it from INPUT")  # fmt: skip
    return path


def plan_outputs(scans: Sequence[Path], out_dir: Path, overwrite: bool) -> List[Tuple[Path, Path]]:
    """Pair every scan with its output file, refusing collisions and (without ``overwrite``) existing files.

    Raises:
        MedsegError: two scans share a name (both would write one file), a scan is its own output, or
            outputs exist already and ``overwrite`` is False.
    """
    jobs = [(scan, output_path(out_dir, scan)) for scan in scans]
    _check_collisions(jobs)
    existing = [target.name for _, target in jobs if target.exists()]
    if existing and not overwrite:
        raise MedsegError(
            f"--out {out_dir}: {len(existing)} output(s) exist already ({_listed(existing)}); "
            "pass --overwrite to replace them or choose another --out"
        )
    return jobs


def _check_collisions(jobs: Sequence[Tuple[Path, Path]]) -> None:
    seen = {}
    for scan, target in jobs:
        if target.resolve() == scan.resolve():
            raise MedsegError(f"INPUT {scan}: is its own output file; choose another --out")
        if target in seen:
            raise MedsegError(
                f"INPUT {seen[target]} and {scan}: both would be written to {target}; "
                "predict them into different --out folders"
            )
        seen[target] = scan


def _listed(names: Sequence[str]) -> str:
    return ", ".join(names[:SHOWN]) + (", ..." if len(names) > SHOWN else "")


def write_label_map(labels: np.ndarray, source: Path, target: Path, num_classes: int) -> Path:
    """Write ``labels`` (the scan's spatial shape, file voxel order) as uint8 NIfTI with ``source``'s header.

    Args:
        labels: integer class indices, shape = the source's first three dimensions.
        source: the scan the labels belong to (its header supplies affine, qform, sform, units).
        target: the ``.nii.gz`` file to create or replace (atomically).
        num_classes: number of classes, stored as the display range ``cal_min``/``cal_max``.

    Raises:
        MedsegError: when ``labels`` does not have the source's spatial shape.
    """
    import nibabel as nib

    header = nib.load(str(source)).header.copy()
    if tuple(labels.shape) != tuple(header.get_data_shape()[:3]):
        raise MedsegError(f"{source}: prediction shape {labels.shape} differs from the scan's {header.get_data_shape()}"
                          "; this is a bug, please report it")
    image = nib.Nifti1Image(np.ascontiguousarray(labels, dtype=np.uint8), None, header=header)
    label_header(image.header, num_classes)
    return _save_atomic(image, Path(target))


def label_header(header, num_classes: int) -> None:
    """Mark the header as a label map: uint8, no intensity scaling, display range 0..K-1."""
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(None, None)
    header.set_intent(NIFTI_INTENT_LABEL)
    header["cal_min"], header["cal_max"] = 0, max(0, num_classes - 1)
    header["descrip"] = DESCRIPTION


def _save_atomic(image, target: Path) -> Path:
    import nibabel as nib

    with replacing(target, suffix=".tmp.nii.gz") as temp:
        nib.save(image, temp)
    return target


class SpilledImage(SlabSource):
    """A preprocessed image ``(C, X, Y, Z)`` moved into an anonymous temporary file, served as the batch
    ``(1, C, X, Y, Z)`` one slab along the last axis at a time (what :func:`~medseg_mem.inference.slab.cut_slab`
    returns, as a contiguous float32 tensor on ``device``).

    The file holds the image slice by slice (Z-major), so a slab is one contiguous read; it is read with plain
    file reads, never mapped, so only the slab in hand is resident. Use it as a context manager: the file is
    deleted on close (it has no name, so also when the process dies).

    Example:
        >>> with SpilledImage(torch.arange(24.0).reshape(1, 2, 3, 4), "cpu") as image:
        ...     image.cut(2, 3, axis=-1)[0, 0, 0, 0].tolist()
        [2.0, 3.0, 0.0]
    """

    def __init__(self, image: torch.Tensor, device: Any) -> None:
        self.shape = (1, *image.shape)
        self.device = torch.device(device)
        self._file = tempfile.TemporaryFile(prefix="medseg-mem-image-")
        try:
            for view in slab_views(image):
                self._file.write(view.float().permute(3, 0, 1, 2).contiguous().numpy())
            self._file.flush()
        except OSError as error:
            self.close()
            raise MedsegError(
                f"cannot keep the preprocessed image in {tempfile.gettempdir()} ({error}); free space there or "
                "point TMPDIR at a folder with room for it"
            ) from error

    def cut(self, start: int, slab_size: int, axis: int) -> torch.Tensor:
        """``slab_size`` slices from ``start`` along the last axis, zero-padded past the end.

        Raises:
            ValueError: for any other axis, or a ``start`` outside the volume.
        """
        depth = self.shape[-1]
        if axis % len(self.shape) != len(self.shape) - 1 or not 0 <= start < depth:
            raise ValueError(f"SpilledImage cuts the last axis from [0, {depth}); got axis {axis}, start {start}")
        slices = np.empty((min(slab_size, depth - start), *self.shape[1:-1]), np.float32)
        self._file.seek(start * slices[0].nbytes)
        if self._file.readinto(slices) != slices.nbytes:
            raise MedsegError("the temporary copy of the image is shorter than written; this is a bug, please report")
        slab = torch.zeros((*self.shape[:-1], slab_size), dtype=torch.float32)
        slab[0, ..., : len(slices)] = torch.from_numpy(slices).permute(1, 2, 3, 0)
        return slab.to(self.device)

    def close(self) -> None:
        """Delete the temporary file."""
        self._file.close()

    def __enter__(self) -> "SpilledImage":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
