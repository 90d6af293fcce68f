"""One inference object per trained run: a variant's networks, ready to segment whole volumes.

:class:`TrainedVariant` is built once from the variant, its networks (one per stage), the model settings, the
number of classes and the inference settings; it makes each stage's :class:`~medseg_mem.variants.base.StageInference`
(precision, mirroring and slab inferers) once, and every later call only runs them. Evaluation of the test split,
``predict`` (PyTorch or ONNX Runtime networks), the memory measurement and the planner's trace (``meta`` networks)
all segment through it.

Example:
    >>> from medseg_mem.models.unet import UNet3D
    >>> model = ModelConfig(channels=(4, 8), slab_size=8)
    >>> run = TrainedVariant(get_variant("patch"), {"patch": UNet3D(1, 3, (4, 8)).eval()}, model, num_classes=3)
    >>> with torch.inference_mode():
    ...     run.segment(torch.zeros(1, 1, 8, 8, 20)).shape, run.probabilities(torch.zeros(1, 1, 8, 8, 20)).shape
    (torch.Size([1, 1, 8, 8, 20]), torch.Size([1, 3, 8, 8, 20]))
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from medseg_mem.core.config import InferenceConfig, ModelConfig
from medseg_mem.core.errors import MedsegError
from medseg_mem.models.build import load_networks
from medseg_mem.variants.base import StageInference, Variant
from medseg_mem.variants.registry import get_variant
from medseg_mem.variants.trained_run import TrainedRun


class TrainedVariant:
    """A variant with its networks and settings, which segments whole volumes.

    Args:
        variant: the variant (its recipe: :meth:`~medseg_mem.variants.base.Variant.segment`).
        nets: stage name -> network, for every stage of ``variant``.
        model: the variant settings the networks were trained with (slab size, downsample, guidance).
        num_classes: classes including the background.
        inference: slab batch, overlap, precision and mirroring (default
            :class:`~medseg_mem.core.config.InferenceConfig`).
        labels_device: where label maps are kept (default: where the networks run); ``predict`` keeps them on
            the CPU.

    Raises:
        MedsegError: a stage of ``variant`` has no network in ``nets``.
    """

    def __init__(self, variant: Variant, nets: Mapping[str, nn.Module], model: ModelConfig, num_classes: int,
                 inference: InferenceConfig = None, labels_device: Any = None) -> None:  # fmt: skip
        missing = [stage.name for stage in variant.stages() if stage.name not in nets]
        if missing:
            raise MedsegError(f"the {variant.name} variant needs networks for {', '.join(missing)}; got {sorted(nets)}")
        self.variant, self.nets, self.model, self.num_classes = variant, dict(nets), model, int(num_classes)
        self.inference = inference or InferenceConfig()
        self.stages = {stage.name: StageInference(stage, nets[stage.name], model, self.inference, labels_device)
                       for stage in variant.stages()}  # fmt: skip

    @classmethod
    def load(cls, trained: TrainedRun, device: torch.device, inference: InferenceConfig = None,
             labels_device: Any = None) -> "TrainedVariant":  # fmt: skip
        """The trained run's best networks loaded on ``device`` as ``inference`` runs them (precision, layout)."""
        inference = inference or InferenceConfig()
        nets = load_networks(trained.paths, device, inference.channels_last, inference.precision, trained.specs)
        return cls(get_variant(trained.variant), nets, trained.model, trained.num_classes, inference, labels_device)

    def segment(self, image) -> torch.Tensor:
        """Label map ``(1, 1, X, Y, Z)`` (uint8; int16 beyond 255 classes) of a batched full-resolution image
        ``(1, C, X, Y, Z)`` (:meth:`~medseg_mem.variants.base.Variant.segment`)."""
        return self.variant.segment(self, image)

    def probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(1, K, X, Y, Z)`` of the same image
        (:meth:`~medseg_mem.variants.base.Variant.probabilities`)."""
        return self.variant.probabilities(self, image)

    def eval(self) -> "TrainedVariant":
        """Every network in evaluation mode; returns ``self``."""
        for net in self.nets.values():
            if isinstance(net, nn.Module):
                net.eval()
        return self
