"""Streamed labels: slab groups become uint8 labels at once, the cascade's guidance is made per slab, and every
variant's label map equals the argmax of the full-size path it replaced, exactly."""

from __future__ import annotations

import pytest
import torch
from full_size_reference import full_size_guidance, full_size_labels, full_size_probabilities

from medseg_mem.core.config import ModelConfig
from medseg_mem.core.errors import OptionError
from medseg_mem.inference import SlabInferer, argmax_into, cut_slab, label_dtype, labels_of
from medseg_mem.inference.metrics import dice_per_class
from medseg_mem.models.unet import UNet3D
from medseg_mem.variants import TrainedVariant, get_variant
from medseg_mem.variants.guided import GuidedSlabs
from medseg_mem.variants.resample import one_hot, resample_image

K = 3
SIZES = [(10, 12, 21), (7, 9, 8), (11, 13, 33), (9, 6, 5)]  # odd sizes; 21, 33 and 5 leave a padded last slab


def rounding_net(classes=K):
    """Analytic network: logits ``-(x - k)^2`` per class k, so the argmax is ``round(x)`` clipped to [0, K-1]."""
    centres = torch.arange(classes, dtype=torch.float32).view(1, -1, 1, 1, 1)
    return lambda x: -((x[:, :1] - centres) ** 2)


def expected_rounding(x, classes=K):
    return torch.floor(x[:, :1] + 0.5).clamp(0, classes - 1).to(torch.uint8)


def off_the_ties(x, margin=1e-3):
    """``x`` with values within ``margin`` of a half-integer moved past it: there the two classes' float32 logits
    can tie or round either way, and the argmax need not be ``floor(x + 0.5)``."""
    near = (x - x.floor() - 0.5).abs() < margin
    return torch.where(near, x + 2 * margin, x)


def networks(name, model, channels=1, seed=0):
    """Random U-Nets per stage, plus :func:`rounding_net` so that every class occurs (a random U-Net alone
    predicts one class almost everywhere) and the U-Net decides the voxels near the class boundaries."""
    torch.manual_seed(seed)
    stages = get_variant(name).stages()
    unets = {s.name: UNet3D(s.in_channels(channels, K, model), K, model.channels).eval() for s in stages}
    return {name: (lambda x, unet=unet: unet(x) + 3 * rounding_net()(x)) for name, unet in unets.items()}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("slab, group", [(8, 1), (8, 2), (4, 3), (64, 1)])
def test_slab_labels_stitch_an_analytic_network_exactly(size, slab, group):
    x = off_the_ties(torch.rand(2, 1, *size, generator=torch.Generator().manual_seed(slab * 10 + group)) * 3 - 0.4)
    out = SlabInferer(slab_size=slab, sw_batch_size=group, output="labels", device="cpu")(x, rounding_net())
    assert out.dtype == torch.uint8 and out.shape == (2, 1, *size)
    assert torch.equal(out, expected_rounding(x))


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_slab_labels_equal_the_argmax_of_stitched_logits(axis):
    conv = torch.nn.Conv3d(2, 5, kernel_size=3, padding=1)
    x = torch.randn(1, 2, 9, 11, 13)
    with torch.inference_mode():
        logits = SlabInferer(slab_size=4, spatial_axis=axis)(x, conv)
        labels = SlabInferer(slab_size=4, spatial_axis=axis, output="labels")(x, conv)
    assert torch.equal(labels.long(), logits.argmax(dim=1, keepdim=True))


def test_more_than_255_classes_give_int16_labels():
    x = torch.rand(1, 1, 4, 4, 7) * 299
    out = SlabInferer(slab_size=3, output="labels")(x, rounding_net(300))
    assert out.dtype == torch.int16 and torch.equal(out.long(), torch.floor(x + 0.5).clamp(0, 299).long())
    assert label_dtype(255) == torch.uint8 and label_dtype(256) == torch.int16


def test_chunked_argmax_and_whole_volume_labels():
    logits = torch.randn(2, 4, 5, 6, 37)
    assert torch.equal(labels_of(logits, chunk=5).long(), logits.argmax(dim=1, keepdim=True))
    out = argmax_into(logits, torch.zeros(2, 1, 5, 6, 37, dtype=torch.int16), axis=2, chunk=2)
    assert torch.equal(out.long(), logits.argmax(dim=1, keepdim=True))


def test_bad_output_options_name_the_parameter():
    with pytest.raises(OptionError, match="output must be 'logits' or 'labels'; got 'probabilities'"):
        SlabInferer(output="probabilities")
    with pytest.raises(OptionError, match="num_classes must be an integer in"):
        label_dtype(40000)
    with pytest.raises(OptionError, match="out must have the logits' batch and spatial size"):
        argmax_into(torch.zeros(1, 3, 4, 4, 4), torch.zeros(1, 1, 4, 4, 5, dtype=torch.uint8))
    source = GuidedSlabs(torch.zeros(1, 1, 4, 4, 4), torch.rand(1, 3, 2, 2, 2), "label", 3)
    with pytest.raises(OptionError, match="axis must be the last axis"):
        source.cut(0, 2, 2)


@pytest.mark.parametrize("low, size", [((5, 6, 10), (10, 12, 21)), ((3, 4, 2), (11, 13, 9)), ((2, 2, 3), (9, 6, 5))])
@pytest.mark.parametrize("encoding", ["label", "onehot"])
@pytest.mark.parametrize("kind", ["softmax", "onehot"])
def test_per_slab_guidance_is_bit_for_bit_the_whole_volume_one(low, size, encoding, kind):
    torch.manual_seed(1)
    if kind == "softmax":
        probabilities = torch.softmax(torch.randn(1, K, *low) * 4, dim=1)
    else:  # saturated stage 1: interpolation ties between classes are common
        probabilities = one_hot(torch.randint(0, K, (1, 1, *low)), K)
    image = torch.randn(1, 2, *size)
    whole = torch.cat([image, full_size_guidance(probabilities, size, encoding, K)], dim=1)
    source = GuidedSlabs(image, probabilities, encoding, K)
    assert source.shape == tuple(whole.shape)
    for slab in (4, 8):
        for start in range(0, size[-1], slab):
            assert torch.equal(source.cut(start, slab, -1), cut_slab(whole, start, slab, -1))


def test_guidance_is_not_made_at_full_resolution():
    image, probabilities = torch.zeros(1, 1, 40, 40, 30), torch.rand(1, K, 8, 8, 6)
    source = GuidedSlabs(image, probabilities, "label", K)
    assert tuple(source.columns.shape) == (1, K, 8, 8, 30)  # only the last axis is upsampled ahead
    assert not torch.equal(source.columns[..., :1], resample_image(probabilities, (40, 40, 30))[..., :1])


@pytest.mark.parametrize("name, guidance", [("full", "label"), ("patch", "label"), ("cascade", "label"),
                                            ("cascade", "onehot")])  # fmt: skip
@pytest.mark.parametrize("size", SIZES)
def test_every_variant_labels_equal_the_full_size_argmax(name, size, guidance):
    model = ModelConfig(channels=(2, 4, 8), slab_size=8, downsample=0.5, guidance=guidance)
    nets, image = networks(name, model), torch.randn(1, 1, *size) * 2
    with torch.inference_mode():
        labels = TrainedVariant(get_variant(name), nets, model, K, labels_device="cpu").segment(image)
        reference = full_size_labels(name, nets, image, model, K)
        probabilities = TrainedVariant(get_variant(name), nets, model, K).probabilities(image)
    assert labels.dtype == torch.uint8 and labels.shape == (1, 1, *size)
    assert torch.equal(labels.long(), reference) and len(reference.unique()) > 1
    assert torch.equal(probabilities, full_size_probabilities(name, nets, image, model, K))


def test_cascade_stitches_analytic_stages_exactly():
    """Stage 1 rounds the image, stage 2 copies the guidance back: the labels are the guidance itself."""
    model = ModelConfig(channels=(2, 4), slab_size=4, downsample=0.5, guidance="label")
    image = torch.rand(1, 1, 9, 11, 13) * 2.2
    nets = {"stage1": rounding_net(), "stage2": lambda x: rounding_net()(x[:, 1:] * (K - 1))}
    with torch.inference_mode():
        labels = TrainedVariant(get_variant("cascade"), nets, model, K).segment(image)
        reference = full_size_labels("cascade", nets, image, model, K)
    assert torch.equal(labels.long(), reference) and len(labels.unique()) == K


def test_dice_from_label_maps_equals_monai_on_one_hot():
    from monai.metrics import DiceMetric

    torch.manual_seed(0)
    prediction, label = torch.randint(0, 4, (3, 1, 6, 7, 8)), torch.randint(0, 4, (3, 1, 6, 7, 8))
    label[1][label[1] == 2] = 0  # class 2 absent from one case's label, predicted there: Dice 0
    prediction[2][prediction[2] == 3] = 1
    label[2][label[2] == 3] = 1  # class 3 absent from both: not scored (NaN; MONAI ignore_empty=False: 1.0)
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=False)
    expected = metric(one_hot(prediction, 4), one_hot(label, 4))
    assert expected[1, 1] == 0 and expected[2, 2] == 1
    expected[2, 2] = float("nan")
    torch.testing.assert_close(dice_per_class(prediction.to(torch.uint8), label, 4), expected, rtol=0, atol=0,
                               equal_nan=True)


@pytest.mark.parametrize("length, group", [(35, 1), (100, 2), (97, 3)])
@pytest.mark.parametrize("guided", [False, True], ids=["image", "guided"])
def test_representative_slabs_trace_the_same_peak_for_labels(length, group, guided):
    """The planner's shortened slab loop keeps the traced peak with a label map and with per-slab guidance."""
    from medseg_mem.inference.slab import representative_slabs
    from medseg_mem.memory.trace import LiveSetTracer

    net = torch.nn.Conv3d(2, 3, 3, padding=1, device="meta")
    image = torch.zeros(1, 1 if guided else 2, 8, 8, length, device="meta")
    low = torch.zeros(1, K, 4, 4, length // 2, device="meta")

    def peak(representative: bool) -> float:
        with torch.inference_mode(), LiveSetTracer([image, low, *net.parameters()], [net]) as tracer:
            inputs = GuidedSlabs(image, low, "label", K) if guided else image
            inferer = SlabInferer(slab_size=8, sw_batch_size=group, output="labels")
            if representative:
                with representative_slabs():
                    inferer(inputs, net)
            else:
                inferer(inputs, net)
        return tracer.trace.peak(multiplier=1.7)

    assert peak(True) == peak(False) > 0
