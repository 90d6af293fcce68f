"""The inference path before labels were streamed, kept as the reference the streamed path must equal:
full-size softmax, the cascade's full-resolution guidance and concatenated input, int64 argmax."""

from __future__ import annotations

import torch

from medseg_mem.variants.resample import encode_guidance, resample_image, resample_probabilities, scaled_size
from medseg_mem.variants import get_variant


def full_size_probabilities(name, nets, image, model, num_classes):
    """Class probabilities ``(1, K, X, Y, Z)`` exactly as ``Variant.segment`` computed them before streaming."""
    stages = get_variant(name).stages()
    if name != "cascade":
        (stage,) = stages
        return torch.softmax(stage.forward(nets[stage.name], image, model), dim=1)
    low_stage, slab_stage = stages
    low = resample_image(image, scaled_size(image.shape[2:], model.downsample))
    low_probabilities = torch.softmax(low_stage.forward(nets[low_stage.name], low, model), dim=1)
    guided = torch.cat([image, full_size_guidance(low_probabilities, image.shape[2:], model.guidance, num_classes)], 1)
    return torch.softmax(slab_stage.forward(nets[slab_stage.name], guided, model), dim=1)


def full_size_guidance(low_probabilities, size, encoding, num_classes):
    """The cascade's whole-volume guidance: stage-1 probabilities upsampled in one call, argmax, encoded."""
    guide = resample_probabilities(low_probabilities, size).argmax(dim=1, keepdim=True)
    return encode_guidance(guide, encoding, num_classes)


def full_size_labels(name, nets, image, model, num_classes):
    """``argmax`` of :func:`full_size_probabilities`, ``(1, 1, X, Y, Z)`` int64."""
    return full_size_probabilities(name, nets, image, model, num_classes).argmax(dim=1, keepdim=True)
