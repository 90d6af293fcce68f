"""``cascade``: a low-resolution U-Net gives global context to a slab-wise U-Net at full resolution.

Stage 1 segments the volume downsampled by ``downsample`` (thesis: 0.3 brain, 0.2 liver). Stage 2 sees, slab
by slab, the full-resolution image concatenated with stage 1's segmentation upsampled back to full size. The
stages are trained independently (thesis 2.2.3): stage 2's training guidance is the ground-truth label
downsampled and upsampled again, so it carries the same blur as a good stage-1 output.
"""

from __future__ import annotations

from typing import List, Mapping

import torch
from torch import nn

from medseg_mem.config import ModelConfig
from medseg_mem.resample import encode_guidance, resample_image, resample_probabilities, scaled_size
from medseg_mem.variants.base import Stage, Variant


class CascadeVariant(Variant):
    name = "cascade"
    description = "low-resolution U-Net, then slab U-Net guided by its upsampled segmentation"

    def stages(self) -> List[Stage]:
        return [
            Stage("stage1", slab=False, include_background=False, scale=None),
            Stage("stage2", slab=True, include_background=True, guided=True),
        ]

    def segment(
        self, nets: Mapping[str, nn.Module], image: torch.Tensor, model: ModelConfig, num_classes: int
    ) -> torch.Tensor:
        low_stage, slab_stage = self.stages()
        size = image.shape[2:]
        low = resample_image(image, scaled_size(size, model.downsample))
        low_probabilities = torch.softmax(low_stage.forward(nets[low_stage.name], low, model), dim=1)
        guide = resample_probabilities(low_probabilities, size).argmax(dim=1, keepdim=True)
        del low, low_probabilities
        guided = torch.cat([image, encode_guidance(guide, model.guidance, num_classes)], dim=1)
        return torch.softmax(slab_stage.forward(nets[slab_stage.name], guided, model), dim=1)
