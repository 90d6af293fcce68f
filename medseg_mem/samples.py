"""Training samples: whole volumes or random slabs along the last axis, padded into one batch.

Slabs are drawn from the same grid the slab inferer uses (starts 0, s, 2s, ..., last slab zero-padded), so
training sees exactly the inputs inference will see.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import torch
from torch.nn import functional as F

from medseg_mem.inference.slab import cut_slab, slab_starts

Pair = Tuple[torch.Tensor, torch.Tensor]


def foreground_starts(label: torch.Tensor, slab_size: int) -> List[int]:
    """Slab starts along the last axis whose slab holds at least one foreground voxel."""
    present = label.reshape(-1, label.shape[-1]).amax(dim=0) > 0
    return [s for s in slab_starts(label.shape[-1], slab_size) if bool(present[s : s + slab_size].any())]


def random_slab(pair: Pair, slab_size: int, skip_empty: bool, rng: np.random.Generator) -> Pair:
    """One slab of ``(x, y)`` (unbatched, channel first) at a random grid start along the last axis."""
    x, y = pair
    starts = foreground_starts(y, slab_size) if skip_empty else []
    starts = starts or slab_starts(x.shape[-1], slab_size)
    start = starts[int(rng.integers(len(starts)))]
    return cut_slab(x, start, slab_size, axis=-1), cut_slab(y, start, slab_size, axis=-1)


def pad_to(tensor: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Zero-pad the spatial axes (the last three) of ``tensor`` at their end up to ``size``."""
    pad: List[int] = []
    for have, want in zip(reversed(tensor.shape[-3:]), reversed(tuple(size))):
        pad += [0, want - have]
    return F.pad(tensor, pad) if any(pad) else tensor


def collate(pairs: Sequence[Pair]) -> Pair:
    """Stack pairs of different spatial sizes by zero-padding to the largest (label 0 = background)."""
    size = [max(p[0].shape[axis] for p in pairs) for axis in (-3, -2, -1)]
    xs = torch.stack([pad_to(x, size) for x, _ in pairs])
    ys = torch.stack([pad_to(y, size) for _, y in pairs])
    return xs, ys


def draw_batch(
    pairs: Sequence[Pair], batch_size: int, slab_size: int | None, skip_empty: bool, rng: np.random.Generator
) -> Pair:
    """A training batch: ``batch_size`` random cases, each whole or (``slab_size`` given) one random slab."""
    chosen = [pairs[int(i)] for i in rng.integers(len(pairs), size=batch_size)]
    if slab_size is not None:
        chosen = [random_slab(pair, slab_size, skip_empty, rng) for pair in chosen]
    return collate(chosen)
