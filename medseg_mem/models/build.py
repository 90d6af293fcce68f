"""Build a stage's U-Net from settings, or rebuild it from a checkpoint; shared by training and prediction."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import torch

from medseg_mem.checkpoint import load_checkpoint
from medseg_mem.config import ModelConfig
from medseg_mem.models.unet import UNet3D


def build_network(in_channels: int, num_classes: int, model: ModelConfig, checkpointing: bool = False) -> UNet3D:
    """The spec U-Net with ``model``'s widths (random weights: seed torch first for a repeatable network)."""
    return UNet3D(in_channels, num_classes, channels=model.channels, checkpointing=checkpointing)


def load_networks(paths: Dict[str, Path], device: torch.device) -> Dict[str, torch.nn.Module]:
    """Rebuild each stage's U-Net from its checkpoint (validated, ``weights_only``), in eval mode on ``device``."""
    nets = {}
    for stage, path in paths.items():
        saved = load_checkpoint(path, map_location=device)
        spec = saved["model"]
        net = build_network(spec["in_channels"], spec["num_classes"], ModelConfig(channels=tuple(spec["channels"])))
        net.load_state_dict(saved["state_dict"])
        nets[stage] = net.to(device).eval()
    return nets
