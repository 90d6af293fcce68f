"""Seeding: everything random in a stage's training is fixed by the run's seed, before anything is built.

A network made before the RNG is seeded gets whatever the RNG held, so :func:`seed_everything` runs first in
:func:`~medseg_mem.training.loop.train_stage`. Samples draw their randomness from their own index (see
:mod:`~medseg_mem.training.sampling`), so DataLoader workers need no seeding of their own.
"""

from __future__ import annotations

import torch
from monai.utils import set_determinism

STAGE_STRIDE = 1000  # stage k of a run with seed s seeds torch with s * 1000 + k


def stage_seed(seed: int, stage_index: int) -> int:
    """The seed of stage ``stage_index`` of a run seeded with ``seed`` (distinct for every pair)."""
    return seed * STAGE_STRIDE + stage_index


def seed_everything(seed: int, stage_index: int = 0, deterministic: bool = False) -> None:
    """Seed Python, numpy and torch (MONAI ``set_determinism``; cuDNN deterministic, no benchmarking).

    Args:
        seed: the run's seed.
        stage_index: the stage's position in its variant.
        deterministic: also make torch refuse nondeterministic algorithms
            (``torch.use_deterministic_algorithms``); on CPU the same seed already reproduces a run bit for bit.
    """
    set_determinism(seed=stage_seed(seed, stage_index))
    torch.use_deterministic_algorithms(deterministic, warn_only=False)
