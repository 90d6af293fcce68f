"""``full``: one U-Net on the whole (padded) volume. Best context, memory grows with the voxel count."""

from __future__ import annotations

from typing import List, Mapping

import torch
from torch import nn

from medseg_mem.config import ModelConfig
from medseg_mem.variants.base import Stage, Variant


class FullVariant(Variant):
    name = "full"
    description = "3D U-Net on the whole volume"

    def stages(self) -> List[Stage]:
        return [Stage("full", slab=False, include_background=False)]

    def segment(
        self, nets: Mapping[str, nn.Module], image: torch.Tensor, model: ModelConfig, num_classes: int
    ) -> torch.Tensor:
        (stage,) = self.stages()
        return torch.softmax(stage.forward(nets[stage.name], image, model), dim=1)
