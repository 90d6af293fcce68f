"""``full``: one U-Net on the whole (padded) volume. Best context, memory grows with the voxel count."""

from __future__ import annotations

from typing import List

from medseg_mem.variants.base import Stage, Variant


class FullVariant(Variant):
    name = "full"
    description = "3D U-Net on the whole volume"

    def stages(self) -> List[Stage]:
        return [Stage("full", slab=False, include_background=False)]
