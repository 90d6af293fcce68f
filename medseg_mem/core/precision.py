"""Training precision: autocast to bf16/fp16 around the forward pass, a gradient scaler for fp16.

Weights, gradients and optimizer states stay float32 (the master copy); only activations are kept in the
lower precision. The loss is computed in float32 on the upcast logits, as nnU-Net and MONAI's AMP recipes do.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager, Optional

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device: torch.device) -> ContextManager:
    """``torch.autocast`` for ``bf16``/``fp16`` on ``device``; a no-op context for ``fp32``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> Optional["torch.amp.GradScaler"]:
    """A gradient scaler for ``fp16`` (small gradients underflow in half precision); ``None`` otherwise."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)
