"""``patch``: the same U-Net on slabs cut along the last axis, stitched back into one segmentation.

Memory is bounded by one slab; the price is context: nothing beyond ``slab_size`` voxels along the last
axis reaches a prediction. Dice loss includes the background (thesis 2.4.1: a slab may hold no foreground).
"""

from __future__ import annotations

from typing import List

from medseg_mem.variants.base import Stage, Variant


class PatchVariant(Variant):
    name = "patch"
    description = "U-Net on slabs along the last axis, stitched back"

    def stages(self) -> List[Stage]:
        return [Stage("patch", slab=True, include_background=True)]
