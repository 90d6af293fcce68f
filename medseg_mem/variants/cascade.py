"""``cascade``: a low-resolution U-Net gives global context to a slab-wise U-Net at full resolution.

Stage 1 segments the volume downsampled by ``downsample`` (thesis: 0.3 brain, 0.2 liver). Stage 2 sees, slab
by slab, the full-resolution image concatenated with stage 1's segmentation upsampled back to full size; that
guidance is made per slab from stage 1's small output (:class:`~medseg_mem.variants.guided.GuidedSlabs`). The
thesis trains the stages independently (2.2.3; ``--stage2-guidance truth``): stage 2's training guidance is the
ground-truth label downsampled and upsampled again, the blur of a good stage-1 output. On real data stage 2
trains by default on stage 1's own out-of-fold predictions instead (:mod:`~medseg_mem.runner.out_of_fold`), as
nnU-Net does.
"""

from __future__ import annotations

from typing import List

import torch

from medseg_mem.variants.resample import resample_image, scaled_size
from medseg_mem.variants.base import Stage, Variant
from medseg_mem.variants.guided import GuidedSlabs


class CascadeVariant(Variant):
    name = "cascade"
    description = "low-resolution U-Net, then slab U-Net guided by its upsampled segmentation"

    def stages(self) -> List[Stage]:
        return [
            Stage("stage1", slab=False, include_background=False, scale=None),
            Stage("stage2", slab=True, include_background=True, guided=True),
        ]

    def guided_input(self, run, image: torch.Tensor) -> GuidedSlabs:
        """Stage 1 on the downsampled image, then stage 2's input as a :class:`GuidedSlabs` (made per slab)."""
        low = resample_image(image, scaled_size(image.shape[2:], run.model.downsample))
        low_logits = run.stages["stage1"].logits(low)
        low_probabilities = torch.softmax(low_logits.float(), dim=1)
        del low_logits
        del low
        return GuidedSlabs(image, low_probabilities, run.model.guidance, run.num_classes)

    def segment(self, run, image: torch.Tensor) -> torch.Tensor:
        return run.stages["stage2"].labels(self.guided_input(run, image))

    def probabilities(self, run, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(run.stages["stage2"].logits(self.guided_input(run, image)).float(), dim=1)
