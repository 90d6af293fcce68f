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

from typing import Any, List, Mapping

import torch
from torch import nn

from medseg_mem.core.config import InferenceConfig, ModelConfig
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

    def guided_input(
        self, nets: Mapping[str, nn.Module], image: torch.Tensor, model: ModelConfig, num_classes: int,
        inference: InferenceConfig = None,
    ) -> GuidedSlabs:  # fmt: skip
        """Stage 1 on the downsampled image, then stage 2's input as a :class:`GuidedSlabs` (made per slab)."""
        low_stage = self.stages()[0]
        low = resample_image(image, scaled_size(image.shape[2:], model.downsample))
        low_logits = low_stage.forward(nets[low_stage.name], low, model, inference)
        low_probabilities = torch.softmax(low_logits.float(), dim=1)
        del low_logits
        del low
        return GuidedSlabs(image, low_probabilities, model.guidance, num_classes)

    def segment(
        self, nets: Mapping[str, nn.Module], image: torch.Tensor, model: ModelConfig, num_classes: int,
        device: Any = None, inference: InferenceConfig = None,
    ) -> torch.Tensor:  # fmt: skip
        slab_stage = self.stages()[1]
        guided = self.guided_input(nets, image, model, num_classes, inference)
        return slab_stage.labels(nets[slab_stage.name], guided, model, device, inference)

    def probabilities(
        self, nets: Mapping[str, nn.Module], image: torch.Tensor, model: ModelConfig, num_classes: int,
        inference: InferenceConfig = None,
    ) -> torch.Tensor:  # fmt: skip
        slab_stage = self.stages()[1]
        guided = self.guided_input(nets, image, model, num_classes, inference)
        return torch.softmax(slab_stage.forward(nets[slab_stage.name], guided, model, inference).float(), dim=1)
