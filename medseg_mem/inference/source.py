"""What :class:`~medseg_mem.inference.slab.SlabInferer` can cut slabs from besides a tensor: a volume whose
slabs are made on demand, so that the whole volume never exists at once (the cascade's guided input)."""

from __future__ import annotations

from typing import Tuple

import torch


class SlabSource:
    """Base class of a lazily made ``(B, C, X, Y, Z)`` volume: subclasses set :attr:`shape` and implement
    :meth:`cut`, which must return what :func:`~medseg_mem.inference.slab.cut_slab` would return on the
    materialised volume.

    Example:
        >>> class Ones(SlabSource):
        ...     shape = (1, 1, 2, 2, 5)
        ...     def cut(self, start, slab_size, axis):
        ...         return torch.ones(1, 1, 2, 2, slab_size)
        >>> Ones().cut(0, 3, -1).shape
        torch.Size([1, 1, 2, 2, 3])
    """

    shape: Tuple[int, ...] = ()

    def cut(self, start: int, slab_size: int, axis: int) -> torch.Tensor:
        """``slab_size`` voxels from ``start`` along tensor dimension ``axis``, zero-padded past the end."""
        raise NotImplementedError
