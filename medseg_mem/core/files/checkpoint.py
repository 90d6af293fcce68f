"""Checkpoints: written atomically, read as untrusted input.

A checkpoint holds only tensors and plain Python values, so it loads with ``torch.load(weights_only=True)``;
what it holds is validated before use, and a file of the wrong kind gets an error that names it. Every checkpoint
gets a SHA-256 sidecar (``best.pt.sha256``, :mod:`medseg_mem.core.files.digest`) that is checked on load, so a file
modified or damaged after it was written is refused with one line instead of giving other predictions;
checkpoints written before digests existed load without the check.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any, Dict

import torch

from medseg_mem.core.files.atomic import write_error
from medseg_mem.core.files.digest import replacing_with_digest, verify_digest
from medseg_mem.core.errors import MedsegError
from medseg_mem.core.files.readable import open_failure

FORMAT = "medseg-mem-checkpoint/1"
REQUIRED = ("format", "variant", "stage", "step", "state_dict", "model")


def save_checkpoint(path: Path, payload: Dict[str, Any]) -> Path:
    """Write ``payload`` (plus the format tag) to ``path`` atomically (temp file in the same folder, then
    rename), with its SHA-256 in ``path.sha256``.

    Raises:
        WriteError: the disk is full or the folder not writable; the previous checkpoint is unchanged.
    """
    path = Path(path)
    with replacing_with_digest(path, suffix=".pt") as temp:
        try:
            torch.save({"format": FORMAT, **payload}, temp)
        except RuntimeError as error:  # torch's zip writer reports a full disk as RuntimeError
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise write_error(path, reason) from error
    return path


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> Dict[str, Any]:
    """Load and validate a checkpoint written by :func:`save_checkpoint`.

    Raises:
        MedsegError: the file is missing, fails its SHA-256 check, is damaged or not a torch file, holds code
            objects (refused by ``weights_only``), or is not a medseg-mem checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise MedsegError(f"checkpoint {path}: no such file; pass the best.pt or last.pt of a run")
    unreadable = open_failure(path, "checkpoint")
    if unreadable:
        raise MedsegError(unreadable)
    verify_digest(path)
    if not zipfile.is_zipfile(path):  # every checkpoint torch.save writes is a zip archive
        raise MedsegError(f"checkpoint {path}: the file is damaged or not a medseg-mem checkpoint (not a torch zip "
                          "archive); restore it from a backup or retrain with `medseg-mem run`")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means "not a checkpoint we accept"
        raise MedsegError(unreadable_message(path, error)) from error
    return validate_checkpoint(payload, path)


def unreadable_message(path: Path, error: Exception) -> str:
    """One line for a checkpoint ``torch.load`` refused: code objects in it, or a damaged / foreign file."""
    found = code_found(str(error))
    if found:
        return (f"checkpoint {path}: cannot be read safely: it holds code, not only tensors ({found}); nothing in "
                "it was run: load only checkpoints written by medseg-mem")
    return (f"checkpoint {path}: the file is damaged or not a medseg-mem checkpoint ({short_reason(error)}); "
            "restore it from a backup or retrain with `medseg-mem run`")


def code_found(text: str) -> str:
    """The global (function or class) a ``weights_only`` load refused, e.g. ``GLOBAL posix.system``; empty when
    ``text`` (torch's error) is about something else."""
    match = re.search(r"(?:Unsupported global: |unsupported )(GLOBAL [\w.]+)", text)
    return match.group(1) if match else ""


def short_reason(error: Exception) -> str:
    """The informative part of a ``torch.load`` error, e.g. ``UnpicklingError: Unsupported operand 149``."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    detail = lines[0][:80] if lines and not isinstance(error, UnicodeDecodeError) else "cannot be unpickled"
    return f"{type(error).__name__}: {detail}"


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
