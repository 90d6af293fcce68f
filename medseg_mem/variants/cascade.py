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

from typing import Any, Iterator, List

import torch

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

    def guided_input(self, run, image: torch.Tensor) -> GuidedSlabs:
        """Stage 1 on the downsampled image, then stage 2's input as a :class:`GuidedSlabs` (made per slab)."""
        low_probabilities = self.low_probabilities(run, resample_image(image, scaled_size(image.shape[2:],
                                                                                          run.model.downsample)))
        return GuidedSlabs(image, low_probabilities, run.model.guidance, run.num_classes)

    def low_probabilities(self, run, low: torch.Tensor) -> torch.Tensor:
        """Stage 1's class probabilities ``(1, K, x, y, z)`` of the downsampled image ``low``."""
        return torch.softmax(run.stages["stage1"].logits(low).float(), dim=1)

    def streams(self) -> bool:
        return True

    def stream(self, run, stream, device: Any = None, probabilities: bool = False) -> Iterator[torch.Tensor]:
        """Out of core (:meth:`Variant.stream`): stage 1 on the downsampled image the stream makes in one pass
        (the whole image is never made), then stage 2 chunk by chunk, each chunk guided by the upsampled stage-1
        segmentation of its own slices."""
        model = run.model
        low = stream.downsampled(scaled_size(stream.shape[1:], model.downsample))[None]
        low_probabilities = self.low_probabilities(run, low if device is None else low.to(device))
        del low
        columns = along_last_axis(low_probabilities, stream.shape[-1])
        del low_probabilities
        for start, chunk in stream.slabs(chunk_depth(model, run.inference)):
            x = GuidedSlabs.chunk(chunk[None] if device is None else chunk[None].to(device), columns, start,
                                  model.guidance, run.num_classes)  # fmt: skip
            yield chunk_output(run.stages["stage2"], x, device, probabilities)

    def segment(self, run, image: torch.Tensor) -> torch.Tensor:
        return run.stages["stage2"].labels(self.guided_input(run, image))

    def probabilities(self, run, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(run.stages["stage2"].logits(self.guided_input(run, image)).float(), dim=1)
