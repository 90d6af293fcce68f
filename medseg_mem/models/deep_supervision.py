"""nnU-Net's deep-supervision loss: one loss per U-Net resolution, weighted 1, 1/2, 1/4, ... and summed.

A deep-supervised :class:`~medseg_mem.models.unet.UNet3D` in training mode returns its logits at the top and at
every decoder level below it, highest resolution first (``[1, 1/2, 1/4, ...]``). Output ``k`` is compared with the
label downsampled by ``2**k`` with nearest-neighbour sampling (PyTorch's ``nearest``: the first voxel of each
``2**k`` block, as nnU-Net downsamples its segmentation with nearest interpolation rather than averaging it), by the
stage's own loss (Dice or Dice + cross-entropy, its class weights and batch Dice). The weights ``1 / 2**k`` are
normalised to sum to 1, so the top output keeps the largest share and the loss stays on the plain loss's scale.

nnU-Net gives its lowest decoder output the weight 0 (and builds no head on the bottleneck); here the lowest
decoder level has a head and its weight, so a 3-level U-Net (``--channels 4,8,16``) has one auxiliary output and
no head is idle (nnU-Net's DDP training gives its idle head 1e-6 instead of 0: DDP refuses parameters that get no
gradient).

Why not ``monai.losses.DeepSupervisionLoss`` (MONAI 1.6.1)? Given these weights (its ``weights=``; its default
``"exp"`` mode leaves 1, 1/2, 1/4, ... unnormalised) it sums the same terms, but it resizes the label with
``F.interpolate(mode="nearest-exact")``: that refuses the int64 labels the losses take (``NotImplementedError``
for ``Long``), and on a float label it samples the centre of each ``2**k`` block (voxel ``2**k * i + 2**k // 2``)
instead of its first voxel, so it gives another loss (and other weights for a seeded run). With this module's
label downsampling swapped in, its loss equals this one bit for bit (tests/test_deep_supervision.py).

Example:
    >>> from monai.losses import DiceCELoss
    >>> loss = DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True), outputs=3)
    >>> [round(w, 4) for w in loss.weights]
    [0.5714, 0.2857, 0.1429]
"""

from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn


def supervision_weights(outputs: int) -> List[float]:
    """The weight of each output, highest resolution first: ``1 / 2**k`` normalised to sum to 1.

    Example:
        >>> supervision_weights(2)
        [0.6666666666666666, 0.3333333333333333]
    """
    raw = [1.0 / 2**k for k in range(int(outputs))]
    return [w / sum(raw) for w in raw]


def downsampled_label(label: torch.Tensor, factor: int) -> torch.Tensor:
    """``label`` ``(B, 1, X, Y, Z)`` at ``1 / factor`` of its size by nearest-neighbour sampling: every ``factor``-th
    voxel from the first, ``ceil(size / factor)`` along each axis (the size of the matching U-Net output).

    Example:
        >>> downsampled_label(torch.arange(5).view(1, 1, 1, 1, 5), 2).flatten().tolist()
        [0, 2, 4]
    """
    return label if factor == 1 else label[:, :, ::factor, ::factor, ::factor]


class DeepSupervisionLoss(nn.Module):
    """``loss`` summed over a deep-supervised network's outputs with :func:`supervision_weights`.

    Args:
        loss: maps ``(float logits, int64 label (B, 1, ...))`` to a scalar, as the plain training loss.
        outputs: how many outputs the network returns in training mode (the top one and one per decoder level
            below it: ``len(channels) - 1``).

    Raises:
        ValueError: fewer than two outputs (nothing to supervise beside the top), or a network that returns
            another number of outputs than ``outputs``.
    """

    def __init__(self, loss: nn.Module, outputs: int) -> None:
        super().__init__()
        if int(outputs) < 2:
            raise ValueError(f"deep supervision needs at least 2 outputs (the top and one level below); got {outputs}")
        self.loss = loss
        self.weights = supervision_weights(outputs)

    def forward(self, logits: Sequence[torch.Tensor], label: torch.Tensor) -> torch.Tensor:
        """The weighted sum of ``loss(logits[k].float(), label downsampled by 2**k)``."""
        if isinstance(logits, torch.Tensor) or len(logits) != len(self.weights):
            count = 1 if isinstance(logits, torch.Tensor) else len(logits)
            raise ValueError(f"expected {len(self.weights)} outputs of a deep-supervised network in training mode; "
                             f"got {count}")  # fmt: skip
        total = None
        for k, (output, weight) in enumerate(zip(logits, self.weights)):
            term = weight * self.loss(output.float(), downsampled_label(label, 2**k))
            total = term if total is None else total + term
        return total
