"""Stage 1's predicted label maps on disk, the cascade's stage-2 guidance under ``--stage2-guidance predicted``: one
uint8 ``<run>/guidance/<case>.npy`` per case at stage-1 resolution, written by
:mod:`~medseg_mem.runner.out_of_fold` and read per sample by the stage-2 loader
(:mod:`~medseg_mem.training.sampling`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medseg_mem.core.errors import MedsegError
from medseg_mem.core.files.atomic import replacing

GUIDANCE_FOLDER = "guidance"


def guidance_path(folder: Path, case_id: str) -> Path:
    """The file of ``case_id``'s predicted label map in ``folder``."""
    return Path(folder) / f"{case_id}.npy"


def save_guidance(folder: Path, case_id: str, labels: torch.Tensor) -> Path:
    """Write ``labels`` (a label map at stage-1 resolution) as ``case_id``'s guidance, uint8, atomically."""
    path = guidance_path(folder, case_id)
    with replacing(path, suffix=".npy") as temp:
        np.save(temp, labels.to(torch.uint8).cpu().numpy())
    return path


def load_guidance(folder: Path, case_id: str) -> torch.Tensor:
    """A case's predicted stage-1 label map ``(1, x, y, z)`` uint8.

    Raises:
        MedsegError: the file is missing (the run folder was changed after stage 1 trained).
    """
    path = guidance_path(folder, case_id)
    if not path.is_file():
        raise MedsegError(f"{path}: stage 1's prediction for case {case_id} is missing; resume the run to make "
                          "it again (`medseg-mem run --resume <run id>`)")  # fmt: skip
    return torch.from_numpy(np.load(path))[None]
