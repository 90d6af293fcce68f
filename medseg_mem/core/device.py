"""Choosing the device a command runs on; shared by training, evaluation and prediction."""

from __future__ import annotations

import torch

from medseg_mem.core.errors import MedsegError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is a clear error.

    Raises:
        MedsegError: ``cuda`` was asked for and no CUDA device is available.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise MedsegError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    return torch.device(name)
