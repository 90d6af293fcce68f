"""Test-time mirroring (``--tta``): a network call averaged over every flip of the mirrored spatial axes.

As nnU-Net, the network is applied to the input flipped along each of the ``2**k`` subsets of the ``k`` mirrored
axes, each output is flipped back, and the softmax probabilities are averaged. :func:`mirrored` wraps the callable
the variants and the slab inferer already call, so the mirroring happens inside each network call: a whole-volume
stage mirrors its whole volume, a slab stage mirrors each slab (along its own thickness too: a flipped slab is
still a slab), and memory stays at one call's input and output plus the running sum of probabilities.

The wrapper returns ``log(mean probability)``, which the callers treat as logits: its softmax is the mean
probability and its argmax the nnU-Net label, so the stitching, the label maps, the cascade's stage-1 softmax and
``predict``'s probabilities all work unchanged. Where slabs overlap (``--overlap``) the slab inferer blends what
the calls return in that log space, as it blends plain logits. The time is ``2**k`` network calls per call.

Example:
    >>> net = torch.nn.Conv3d(1, 2, 3, padding=1)
    >>> mirrored(net, (0, 1, 2))(torch.zeros(1, 1, 4, 4, 4)).exp().sum(dim=1).allclose(torch.ones(1, 4, 4, 4))
    True
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch


def unmirrored_note(augment: str, axes: Sequence[int]) -> Optional[str]:
    """What to tell a user who mirrors (``axes``; empty: no ``--tta``) a network trained with ``augment``: nothing,
    unless it never saw a mirrored sample (``--augment none``), which mirroring then shows images unlike any it
    was trained on (measured on hippocampus: see docs/results.md, "Ablation")."""
    if not axes or augment != "none":
        return None
    return (f"note: --tta mirrors axes {','.join(map(str, axes))}, but the network was trained without mirroring "
            "(--augment none): on asymmetric anatomy that lowers Dice (docs/results.md, Ablation); train with "
            "--augment nnunet, or drop --tta")


def flips(axes: Sequence[int]) -> List[Tuple[int, ...]]:
    """Every subset of the spatial ``axes`` as tensor dimensions of a ``(B, C, X, Y, Z)`` tensor, the empty one
    (no flip) first.

    Example:
        >>> flips((0, 2))
        [(), (2,), (4,), (2, 4)]
    """
    dims = [2 + int(axis) for axis in axes]
    return [subset for count in range(len(dims) + 1) for subset in itertools.combinations(dims, count)]


def mirrored(network: Callable[..., torch.Tensor], axes: Sequence[int]) -> Callable[..., torch.Tensor]:
    """``network`` averaged over the flips of ``axes`` (spatial axes 0, 1, 2 of a 5D input).

    Args:
        network: maps ``(N, C, X, Y, Z)`` to logits ``(N, K, X, Y, Z)`` (a network, an autocast wrapper, an ONNX
            Runtime session).
        axes: the spatial axes to mirror (:attr:`~medseg_mem.core.config.InferenceConfig.tta_axes`).

    Returns:
        a callable of the same signature returning ``log`` of the mean softmax probabilities (in the network's
        output dtype), probabilities summed in float32.
    """
    subsets = flips(axes)

    def mirrored_network(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        total, dtype = None, None
        for dims in subsets:
            logits = network(x.flip(dims) if dims else x, *args, **kwargs)
            dtype = logits.dtype
            probabilities = torch.softmax(logits.float(), dim=1)
            del logits
            probabilities = probabilities.flip(dims) if dims else probabilities
            total = probabilities if total is None else total.add_(probabilities)
            del probabilities
        return total.div_(len(subsets)).clamp_min_(torch.finfo(torch.float32).tiny).log_().to(dtype)

    return mirrored_network
