"""A prepared dataset's cases as tensors, read from their memory maps one case (or one slab) at a time.

:func:`open_case` opens a case without reading it; :func:`as_tensor` copies what is sliced out of a map (so the
map can be dropped); :class:`CaseStream` serves a split's cases for evaluation, one in memory at a time.
"""

from __future__ import annotations

from collections.abc import Sequence as SequenceBase
from typing import Tuple

import numpy as np
import torch

from medseg_mem.data.prepared import PreparedDataset

Pair = Tuple[torch.Tensor, torch.Tensor]


def open_case(dataset: PreparedDataset, case_id: str) -> Tuple[np.ndarray, np.ndarray]:
    """``(image, label)`` of a case as read-only memory maps (nothing is read until sliced)."""
    case = dataset.load(case_id, mmap=True)
    return case.image, case.label


def as_tensor(array) -> torch.Tensor:
    """A tensor owning a copy of (a slice of) a memory map, so the map can be dropped; tensors pass through."""
    return array if isinstance(array, torch.Tensor) else torch.from_numpy(np.array(array))


class CaseStream(SequenceBase):
    """The cases of a split as batched ``(image (1,C,X,Y,Z) float32, label (1,1,X,Y,Z) uint8)`` tensors, each
    read from disk when indexed, so evaluation holds one case at a time.

    Example:
        >>> test = CaseStream(PreparedDataset.open(Path("medseg-work/prepared")), "test")  # doctest: +SKIP
        >>> image, label = test[0]  # doctest: +SKIP
    """

    def __init__(self, dataset: PreparedDataset, split: str) -> None:
        self.dataset, self.ids = dataset, dataset.ids(split)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Pair:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        image, label = open_case(self.dataset, self.ids[index])
        return as_tensor(image)[None], as_tensor(label)[None]
