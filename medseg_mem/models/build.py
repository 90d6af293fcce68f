"""Build a stage's U-Net from settings, or rebuild it from a checkpoint; shared by training and prediction."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import torch

from medseg_mem.core.config import ModelConfig
from medseg_mem.core.files.checkpoint import load_checkpoint
from medseg_mem.models.unet import UNet3D

AUX_PREFIX = "aux_heads."  # the deep-supervision heads' entries in a state dict


def build_network(
    in_channels: int, num_classes: int, model: ModelConfig, checkpointing: bool = False, channels_last: bool = False
) -> UNet3D:
    """The spec U-Net with ``model``'s widths and deep-supervision heads (random weights: seed torch first for a
    repeatable network).

    ``channels_last`` stores the convolution weights channels-last (:func:`channels_last_layout`).
    """
    net = UNet3D(in_channels, num_classes, channels=model.channels, checkpointing=checkpointing,
                 deep_supervision=model.deep_supervision)  # fmt: skip
    return channels_last_layout(net) if channels_last else net


def channels_last_layout(net: torch.nn.Module) -> torch.nn.Module:
    """Store ``net``'s 5-D weights in ``torch.channels_last_3d`` order (in place; returns ``net``).

    Convolutions then produce channels-last activations whatever the input's layout, and oneDNN (CPU) runs
    them without reordering every input and output into its blocked layout. Measured for one training step of
    the spec U-Net at 4x128x128x96 on the 2-core CPU: bf16 + checkpointing 1.33 GB instead of 1.63, bf16 2.28
    instead of 2.58, fp32 3.53 instead of 3.65, and 1.1-1.6x faster (``docs/memory.md``). The values are the
    same; only the summation order inside a convolution may differ, so results agree to rounding, not bit for bit.

    Example:
        >>> net = channels_last_layout(UNet3D(1, 2, channels=(4, 8)))
        >>> net.encoders[0][0].weight.is_contiguous(memory_format=torch.channels_last_3d)
        True
    """
    return net.to(memory_format=torch.channels_last_3d)


def load_networks(
    paths: Dict[str, Path], device: torch.device, channels_last: bool = False, precision: str = "fp32",
    specs: Optional[Dict[str, Dict]] = None,
) -> Dict[str, torch.nn.Module]:
    """Rebuild each stage's U-Net from its checkpoint (validated, ``weights_only``), in eval mode on ``device``,
    with channels-last weights when ``channels_last`` (:func:`channels_last_layout`) and half convolution
    weights for a ``bf16``/``fp16`` inference (:func:`~medseg_mem.core.precision.half_convolutions`).

    ``specs`` (an exported bundle's ``in_channels``, ``out_channels`` and ``channels`` per stage) says that
    ``paths`` hold plain ``state_dict`` files without deep-supervision heads (checked by their caller)."""
    from medseg_mem.core.precision import half_convolutions

    nets = {}
    for stage, path in paths.items():
        if specs is not None:
            spec, state = dict(specs[stage], num_classes=specs[stage]["out_channels"]), None
        else:
            saved = load_checkpoint(path, map_location=device)
            spec, state = saved["model"], saved["state_dict"]
        model = ModelConfig.from_dict(spec)
        net = build_network(spec["in_channels"], spec["num_classes"], model, channels_last=channels_last)
        net.load_state_dict(state if state is not None else torch.load(path, map_location=device, weights_only=True))
        nets[stage] = half_convolutions(net.to(device).eval(), precision)
    return nets


def inference_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``state_dict`` without the deep-supervision heads, which no inference uses: the weights of the plain
    U-Net (what the ONNX export and the MONAI bundle's ``network_def`` load).

    Example:
        >>> sorted(inference_state_dict({"head.weight": 1, "aux_heads.0.weight": 2}))
        ['head.weight']
    """
    return {name: tensor for name, tensor in state_dict.items() if not name.startswith(AUX_PREFIX)}
