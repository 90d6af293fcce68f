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

from typing import Any, Iterator, List, Mapping

import torch
from torch import nn

from medseg_mem.core.config import InferenceConfig, ModelConfig
from medseg_mem.variants.resample import resample_image, scaled_size
from medseg_mem.variants.base import Stage, Variant, chunk_depth, chunk_output
from medseg_mem.variants.guided import GuidedSlabs, along_last_axis


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
        low = resample_image(image, scaled_size(image.shape[2:], model.downsample))
        return GuidedSlabs(image, self.low_probabilities(nets, low, model, inference), model.guidance, num_classes)

    def low_probabilities(self, nets: Mapping[str, nn.Module], low: torch.Tensor, model: ModelConfig,
                          inference: InferenceConfig = None) -> torch.Tensor:  # fmt: skip
        """Stage 1's class probabilities ``(1, K, x, y, z)`` of the downsampled image ``low``."""
        low_stage = self.stages()[0]
        low_logits = low_stage.forward(nets[low_stage.name], low, model, inference)
        return torch.softmax(low_logits.float(), dim=1)

    def streams(self) -> bool:
        return True

    def stream(
        self, nets: Mapping[str, nn.Module], stream, model: ModelConfig, num_classes: int,
        inference: InferenceConfig = None, device: Any = None, probabilities: bool = False,
    ) -> Iterator[torch.Tensor]:  # fmt: skip
        """Out of core (:meth:`Variant.stream`): stage 1 on the downsampled image the stream makes in one pass
        (the whole image is never made), then stage 2 chunk by chunk, each chunk guided by the upsampled stage-1
        segmentation of its own slices."""
        inference = inference or InferenceConfig()
        low = stream.downsampled(scaled_size(stream.shape[1:], model.downsample))[None]
        low_probabilities = self.low_probabilities(nets, low if device is None else low.to(device), model, inference)
        del low
        columns = along_last_axis(low_probabilities, stream.shape[-1])
        del low_probabilities
        slab_stage = self.stages()[1]
        for start, chunk in stream.slabs(chunk_depth(model, inference)):
            x = GuidedSlabs.chunk(chunk[None] if device is None else chunk[None].to(device), columns, start,
                                  model.guidance, num_classes)  # fmt: skip
            yield chunk_output(slab_stage, nets[slab_stage.name], x, model, inference, device, probabilities)

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
