"""``predict --overlay``: beside each label map, ``<name>_overlay.png``, the scan's three planes through the
predicted foreground with the prediction outlined (:func:`~medseg_mem.overlay.figure.draw_overlay`, no ground
truth).

The scan's first channel and the labels are turned to the closest RAS voxel order (flips and axis swaps only,
nibabel's ``as_closest_canonical`` rule), so the planes are shown the same way round as ``medseg-mem show``'s,
and stretched to the scan's voxel size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Tuple

import numpy as np

from medseg_mem.core.errors import MedsegError
from medseg_mem.predict.files import scan_name

OVERLAY_SUFFIX = "_overlay.png"


def overlay_path(out_dir: Path, scan: Path) -> Path:
    """Where ``predict --overlay`` draws ``scan``: ``<out_dir>/<name>_overlay.png``."""
    return Path(out_dir) / f"{scan_name(scan)}{OVERLAY_SUFFIX}"


def check_overlays(jobs: Sequence[Tuple[Path, Path]], overwrite: bool) -> None:
    """Refuse overlays that exist already beside the label maps of ``jobs`` (``(scan, label map)``) unless
    ``overwrite``.

    Raises:
        MedsegError: naming ``--out``, the files and the fix.
    """
    existing = [overlay_path(target.parent, scan).name for scan, target in jobs
                if overlay_path(target.parent, scan).exists()]  # fmt: skip
    if existing and not overwrite:
        shown = ", ".join(existing[:3]) + (", ..." if len(existing) > 3 else "")
        raise MedsegError(f"--out {jobs[0][1].parent}: {len(existing)} overlay(s) exist already ({shown}); pass "
                          "--overwrite to replace them or choose another --out")  # fmt: skip


def draw_scan_overlay(scan: Path, labels: np.ndarray, target: Path, class_names: Sequence[str], title: str) -> Path:
    """Draw ``labels`` (the scan's own voxel grid) over ``scan``'s first channel into ``target``."""
    import nibabel as nib

    from medseg_mem.overlay.figure import draw_overlay

    image = nib.load(str(scan))
    data = image.dataobj[..., 0] if len(image.shape) == 4 else image.dataobj
    ornt = nib.orientations.io_orientation(image.affine)
    canonical = [nib.orientations.apply_orientation(np.asanyarray(array), ornt) for array in (data, labels)]
    spacing = [float(image.header.get_zooms()[int(axis)]) for axis in np.argsort(ornt[:, 0])]
    return draw_overlay(target, canonical[0], canonical[1], None, class_names, title=title, spacing=spacing)
