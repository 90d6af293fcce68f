"""A stage whose training diverged stops at once: a non-finite loss, or non-finite weights about to be saved.

Weights that went to NaN or infinity (a learning rate far too high, an fp16 overflow) would otherwise be filed as
``best.pt`` and ``last.pt`` and evaluated to Dice 0. :func:`check_loss` runs after every step that has no fp16
gradient scaler (the scaler itself skips the steps whose gradients overflow), :func:`check_weights` before every
checkpoint write; either raises :class:`Diverged`, one line naming the stage, the step, the loss and the last
finite checkpoint, which is kept as it was.
"""

from __future__ import annotations

from typing import Any, Dict

import torch

from medseg_mem.core.errors import MedsegError


class Diverged(MedsegError):
    """Training produced a non-finite loss or weights; nothing non-finite was saved."""


def check_loss(job, loss: torch.Tensor, step: int, state: Dict[str, Any]) -> None:
    """Raise :class:`Diverged` when ``loss`` (of step ``step``) is NaN or infinite."""
    if not bool(torch.isfinite(loss)):
        raise diverged(job, step, f"the loss is {float(loss)}", state)


def check_weights(job, net: torch.nn.Module, step: int, loss: float, state: Dict[str, Any]) -> None:
    """Raise :class:`Diverged` when a floating-point weight or buffer of ``net`` is NaN or infinite."""
    tensors = [t for t in net.state_dict().values() if torch.is_floating_point(t)]
    bad = sum(1 for t in tensors if not bool(torch.isfinite(t).all()))
    if bad:
        raise diverged(job, step, f"{bad} of {len(tensors)} weight tensors are NaN or infinite (loss {loss:.4g})",
                       state)  # fmt: skip


def diverged(job, step: int, what: str, state: Dict[str, Any]) -> Diverged:
    """The one-line error: stage, step, what was non-finite, the checkpoint kept and the fix."""
    last = job.folder / "last.pt"
    history = state.get("history") or []
    kept = (f"{last} (step {history[-1]['step']}) is the last finite checkpoint, kept as it was" if history
            and last.is_file() else "no checkpoint was saved before it")  # fmt: skip
    return Diverged(f"[{job.variant}/{job.stage.name}] training diverged at step {step}: {what}; stopped without "
                    f"saving these weights, {kept}; start a new run with a lower --lr (this one: {job.train.lr:g})"
                    + (" or --precision fp32" if job.train.precision != "fp32" else ""))  # fmt: skip
