"""Slab inferer: exact reconstruction, zero padding of the last slab, agreement with MONAI's sliding window."""

import pytest
import torch
from monai.inferers import SlidingWindowInferer

from medseg_mem.core.errors import OptionError
from medseg_mem.inference import SlabInferer, cut_slab, slab_starts


class Recorder(torch.nn.Module):
    """Identity network that remembers every batch it was given."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x.clone())
        return x


def volume(*shape):
    return torch.arange(1, 1 + torch.Size(shape).numel(), dtype=torch.float32).reshape(shape)


@pytest.mark.parametrize("depth", [35, 16, 5])
@pytest.mark.parametrize("slab_size", [1, 16, 64])
@pytest.mark.parametrize("network", [lambda x: x, lambda x: x + 1], ids=["identity", "plus_one"])
def test_pointwise_networks_come_back_exactly(depth, slab_size, network):
    x = volume(1, 2, 3, 4, depth)
    out = SlabInferer(slab_size=slab_size)(x, network)
    assert torch.equal(out, network(x))


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_every_spatial_axis(axis):
    x = volume(2, 1, 19, 7, 6)
    seen = Recorder()
    out = SlabInferer(slab_size=4, spatial_axis=axis, sw_batch_size=2)(x, seen)
    assert torch.equal(out, x)
    assert seen.seen[0].shape[2 + axis % 3] == 4


def test_matches_monai_sliding_window_for_pointwise_network():
    x = torch.randn(2, 2, 5, 6, 35)
    weight = torch.randn(3, 2, 1, 1, 1)
    network = lambda t: torch.nn.functional.conv3d(t, weight).sigmoid()  # noqa: E731
    monai = SlidingWindowInferer(roi_size=(-1, -1, 16), overlap=0, padding_mode="constant")(x, network)
    ours = SlabInferer(slab_size=16)(x, network)
    assert torch.allclose(ours, monai, atol=1e-6)


def test_channel_change_and_batch():
    conv = torch.nn.Conv3d(1, 3, kernel_size=3, padding=1)
    x = torch.randn(3, 1, 6, 6, 20)
    with torch.inference_mode():
        out = SlabInferer(slab_size=8, sw_batch_size=2)(x, conv)
        assert out.shape == (3, 3, 6, 6, 20)
        assert torch.allclose(out[..., :7], conv(x[..., :8])[..., :7], atol=1e-6)


def test_last_slab_is_zero_padded():
    x = volume(2, 1, 2, 2, 35)
    seen = Recorder()
    SlabInferer(slab_size=16, sw_batch_size=2)(x, seen)
    assert [s.shape for s in seen.seen] == [(4, 1, 2, 2, 16), (2, 1, 2, 2, 16)]
    last = seen.seen[-1]
    assert torch.equal(last[..., :3], x[..., 32:])
    assert not last[..., 3:].any()


def test_slab_starts_and_cut_slab():
    assert slab_starts(35, 16) == [0, 16, 32]
    assert slab_starts(3, 16) == [0]
    slab = cut_slab(volume(1, 1, 2, 2, 5), 4, 3, axis=-1)
    assert slab.shape == (1, 1, 2, 2, 3) and not slab[..., 1:].any()
    assert cut_slab(volume(1, 1, 9, 2, 2), 0, 4, axis=2).shape == (1, 1, 4, 2, 2)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"slab_size": 0}, "slab_size"), ({"slab_size": 2.5}, "slab_size"), ({"spatial_axis": 3}, "spatial_axis"),
     ({"sw_batch_size": 0}, "sw_batch_size")],
)
def test_bad_arguments_name_the_parameter(kwargs, name):
    with pytest.raises(OptionError, match=f"{name} must"):
        SlabInferer(**kwargs)


def test_bad_inputs():
    with pytest.raises(OptionError, match="inputs must be a 5D tensor"):
        SlabInferer()(torch.zeros(1, 4, 4, 4), lambda x: x)
    with pytest.raises(OptionError, match="start must be in"):
        cut_slab(torch.zeros(1, 1, 2, 2, 5), 5, 3, axis=-1)
    with pytest.raises(ValueError, match="keep the slab"):
        SlabInferer(slab_size=4)(torch.zeros(1, 1, 4, 4, 8), lambda x: x[..., :2])
