"""Checkpoints: written atomically, read as untrusted input.

A checkpoint holds only tensors and plain Python values, so it loads with ``torch.load(weights_only=True)``;
what it holds is validated before use, and a file of the wrong kind gets an error that names it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import torch

from medseg_mem.atomic import replacing
from medseg_mem.errors import MedsegError

FORMAT = "medseg-mem-checkpoint/1"
REQUIRED = ("format", "variant", "stage", "step", "state_dict", "model")


def save_checkpoint(path: Path, payload: Dict[str, Any]) -> Path:
    """Write ``payload`` (plus the format tag) to ``path`` atomically: temp file in the same folder, then rename."""
    with replacing(path, suffix=".pt") as temp:
        torch.save({"format": FORMAT, **payload}, temp)
    return Path(path)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> Dict[str, Any]:
    """Load and validate a checkpoint written by :func:`save_checkpoint`.

    Raises:
        MedsegError: the file is missing, not a torch file, holds code objects (refused by ``weights_only``),
            or is not a medseg-mem checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise MedsegError(f"checkpoint {path}: no such file; pass the best.pt or last.pt of a run")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means "not a checkpoint we accept"
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        reason = first if any(ch.isalpha() for ch in first) else type(error).__name__
        raise MedsegError(f"checkpoint {path}: cannot be read safely ({reason}); is it a medseg-mem checkpoint?") from error
    return validate_checkpoint(payload, path)


def validate_checkpoint(payload: Any, path: Path) -> Dict[str, Any]:
    """Check the keys and types of a loaded checkpoint; return it unchanged."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise MedsegError(f"checkpoint {path}: not a medseg-mem checkpoint (expected format {FORMAT!r})")
    missing = [key for key in REQUIRED if key not in payload]
    if missing:
        raise MedsegError(f"checkpoint {path}: missing {', '.join(missing)}; the file is incomplete or of another kind")
    state = payload["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MedsegError(f"checkpoint {path}: state_dict must map names to tensors")
    return payload
