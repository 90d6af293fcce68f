"""Overlapping slabs with Gaussian blending in a rolling buffer, and inference precision.

Analytic networks: an identity (or ``x + 1``) network must come back exactly for any overlap; overlap 0 must be
the non-overlapping inferer; where MONAI's windows are the same slabs, the blend must be MONAI's.
"""

import pytest
import torch
from monai.inferers import SlidingWindowInferer

from medseg_mem.core.config import InferenceConfig, ModelConfig
from medseg_mem.core.errors import OptionError
from medseg_mem.core.precision import with_precision
from medseg_mem.inference.blend import RollingBlend, overlapping_starts, slab_step
from medseg_mem.inference import SlabInferer
from medseg_mem.models.unet import UNet3D
from medseg_mem.variants import TrainedVariant, get_variant


@pytest.mark.parametrize("overlap", [0.1, 0.25, 0.5])
@pytest.mark.parametrize("length", [1, 7, 16, 35, 64])
@pytest.mark.parametrize("axis", [0, 2])
def test_identity_network_returns_the_input_exactly_for_any_overlap(overlap, length, axis):
    torch.manual_seed(length)
    x = torch.randn(2, 3, 5, 6, length) if axis == 2 else torch.randn(2, 3, length, 6, 5)
    for group in (1, 3):
        out = SlabInferer(slab_size=16, overlap=overlap, sw_batch_size=group, spatial_axis=axis)(x, lambda t: t)
        assert torch.equal(out, x)
        shifted = SlabInferer(slab_size=4, overlap=overlap, sw_batch_size=group, spatial_axis=axis)(x, lambda t: t + 1)
        assert torch.equal(shifted, x + 1)


def test_overlap_zero_is_the_non_overlapping_inferer():
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(2, 3, 3, padding=1).eval()
    x = torch.randn(1, 2, 8, 8, 37)
    with torch.inference_mode():
        assert torch.equal(SlabInferer(slab_size=8, overlap=0.0)(x, conv), SlabInferer(slab_size=8)(x, conv))


@pytest.mark.parametrize("overlap", [0.25, 0.5])
def test_blend_equals_monai_gaussian_windows_where_the_windows_are_the_same(overlap):
    torch.manual_seed(1)
    conv = torch.nn.Conv3d(2, 3, 3, padding=1).eval()
    x = torch.randn(1, 2, 12, 10, 40)  # (40 - 16) is a multiple of both steps (12, 8): MONAI's windows are our slabs
    monai = SlidingWindowInferer(roi_size=(12, 10, 16), overlap=overlap, mode="gaussian", sigma_scale=(1e6, 1e6, 0.125))
    with torch.inference_mode():
        ours = SlabInferer(slab_size=16, overlap=overlap)(x, conv)
        torch.testing.assert_close(ours, monai(x, conv), rtol=0, atol=1e-5)


def test_overlapping_labels_are_the_argmax_of_the_blended_logits():
    torch.manual_seed(2)
    conv = torch.nn.Conv3d(1, 4, 3, padding=1).eval()
    x = torch.randn(1, 1, 9, 9, 41)
    with torch.inference_mode():
        logits = SlabInferer(slab_size=8, overlap=0.5)(x, conv)
        labels = SlabInferer(slab_size=8, overlap=0.5, sw_batch_size=2, output="labels")(x, conv)
    assert labels.dtype == torch.uint8 and torch.equal(labels.long(), logits.argmax(dim=1, keepdim=True))


def test_overlap_changes_a_context_dependent_prediction():
    """Overlap is not a no-op: a network that sees its slab's zero-padded edges differs between slabs."""
    x = torch.ones(1, 1, 4, 4, 32)
    conv = torch.nn.Conv3d(1, 1, 3, padding=1, bias=False)
    torch.nn.init.constant_(conv.weight, 1.0)
    with torch.inference_mode():
        edge, blended = SlabInferer(slab_size=8)(x, conv), SlabInferer(slab_size=8, overlap=0.5)(x, conv)
    assert edge[0, 0, 1, 1, 8] == 18 and 18 < blended[0, 0, 1, 1, 8] < 27  # a slab edge, then mostly interior


def test_starts_and_step_follow_monai_and_the_spec():
    assert slab_step(16, 0.0) == 16 and slab_step(16, 0.5) == 8 and slab_step(16, 0.3) == 11
    assert list(overlapping_starts(35, 16, 16)) == list(range(0, 35, 16))
    assert list(overlapping_starts(35, 16, 8)) == [0, 8, 16, 24]
    assert list(overlapping_starts(5, 16, 8)) == [0]


def test_rolling_buffer_stays_one_slab_long():
    out = torch.zeros(1, 2, 3, 3, 200)
    blend = RollingBlend(out, slab_size=16, axis=4)
    for start in overlapping_starts(200, 16, 8):
        blend.add(torch.ones(1, 2, 3, 3, 16), start)
        assert blend.buffer.shape[-1] == 16
    assert torch.equal(blend.finish(), torch.ones_like(out))


@pytest.mark.parametrize("kwargs", [{"overlap": 0.9}, {"overlap": -1}, {"overlap": True}])
def test_bad_overlap_names_the_option(kwargs):
    with pytest.raises(OptionError, match="--overlap"):
        SlabInferer(**kwargs)
    with pytest.raises(OptionError, match="--overlap"):
        InferenceConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, option", [({"precision": "int4"}, "--precision"), ({"sw_batch_size": 0}, "--sw-batch-size")]
)
def test_bad_inference_settings_name_the_option(kwargs, option):
    with pytest.raises(OptionError, match=option):
        InferenceConfig(**kwargs)


def test_describe_leaves_out_the_defaults():
    assert InferenceConfig().describe() == "fp32"
    assert InferenceConfig(2, 0.5, "bf16").describe() == "bf16, overlap 0.5, 2 slabs per call"


def test_with_precision_autocasts_only_the_network():
    net = torch.nn.Conv3d(1, 2, 1)
    assert with_precision(net, "fp32") is net
    with torch.inference_mode():
        assert with_precision(net, "bf16")(torch.zeros(1, 1, 2, 2, 2)).dtype == torch.bfloat16


@pytest.mark.parametrize("name", ["full", "patch", "cascade"])
def test_every_variant_segments_with_overlap_and_bf16(name):
    torch.manual_seed(3)
    model = ModelConfig(channels=(2, 4), slab_size=8, downsample=0.5)
    variant = get_variant(name)
    nets = {s.name: UNet3D(s.in_channels(1, 3, model), 3, model.channels).eval() for s in variant.stages()}
    image = torch.randn(1, 1, 16, 16, 30)
    with torch.inference_mode():
        fp32 = TrainedVariant(variant, nets, model, 3).segment(image)
        bf16 = TrainedVariant(variant, nets, model, 3, InferenceConfig(2, 0.5, "bf16")).segment(image)
    assert bf16.dtype == torch.uint8 and bf16.shape == fp32.shape == (1, 1, 16, 16, 30)
    assert (bf16 == fp32).float().mean() > 0.5  # the same network, rounded differently and blended
