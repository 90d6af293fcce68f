"""The lean nonzero z-scoring equals MONAI's ``NormalizeIntensity(nonzero=True)`` to float32 rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import NormalizeIntensity, NormalizeIntensityd

from medseg_mem.data import normalize
from medseg_mem.data.normalize import LeanNormalizeIntensity, LeanNormalizeIntensityd


def scan(shape=(2, 9, 7, 23), seed=0) -> torch.Tensor:
    """Channels with a zero background, different scales, and some exact zeros inside."""
    rng = np.random.default_rng(seed)
    scale = np.arange(1, shape[0] + 1)[:, None, None, None]
    image = (rng.normal(100, 15, size=shape) * scale).astype(np.float32)
    image[:, :2] = 0
    image[rng.random(shape) < 0.05] = 0
    return torch.from_numpy(image)


@pytest.mark.parametrize("channel_wise", [True, False])
def test_equals_monai_to_rounding_and_keeps_zeros(channel_wise, monkeypatch):
    monkeypatch.setattr(normalize, "CHUNK_VOXELS", 100)  # many chunks, some cutting a slice's worth
    image = scan()
    expected = NormalizeIntensity(nonzero=True, channel_wise=channel_wise)(image.clone())
    got = LeanNormalizeIntensity(nonzero=True, channel_wise=channel_wise)(image.clone())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(got == 0, image == 0) and got.dtype == torch.float32


def test_dictionary_version_on_a_metatensor_keeps_its_metadata():
    affine = torch.diag(torch.tensor([0.8, 0.8, 1.5, 1.0], dtype=torch.float64))
    image = MetaTensor(scan(), affine=affine)
    expected = NormalizeIntensityd("image", nonzero=True, channel_wise=True)({"image": image.clone()})["image"]
    got = LeanNormalizeIntensityd("image", nonzero=True, channel_wise=True)({"image": image.clone()})["image"]
    assert isinstance(got, MetaTensor) and torch.equal(got.affine, affine)
    torch.testing.assert_close(got.as_tensor(), expected.as_tensor(), rtol=1e-5, atol=1e-5)


def test_all_zero_and_constant_channels_are_left_as_monai_leaves_them():
    zeros, constant = torch.zeros(1, 4, 4, 4), torch.full((1, 4, 4, 4), 7.0)
    for image in (zeros, constant):
        expected = NormalizeIntensity(nonzero=True)(image.clone())
        assert torch.equal(LeanNormalizeIntensity(nonzero=True)(image.clone()), expected)


def test_other_uses_fall_back_to_monai():
    image = scan()
    given = dict(subtrahend=[1.0, 2.0], divisor=[3.0, 4.0], nonzero=True, channel_wise=True)
    assert torch.equal(LeanNormalizeIntensity(**given)(image.clone()), NormalizeIntensity(**given)(image.clone()))
    whole = LeanNormalizeIntensity(nonzero=False)(image.clone())
    assert torch.equal(whole, NormalizeIntensity(nonzero=False)(image.clone()))


class LargestNewTensor(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the largest tensor any op creates (in-place ops, which return their input, are skipped)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(a) for a in args if isinstance(a, torch.Tensor)}
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor) and id(tensor) not in inputs and not func._schema.is_mutable:
                self.largest = max(self.largest, tensor.numel() * tensor.element_size())
        return out


def test_temporaries_are_bounded_by_the_chunk_not_the_image(monkeypatch):
    """MONAI's nonzero z-scoring makes full-size copies; the lean one only chunk-sized temporaries."""
    monkeypatch.setattr(normalize, "CHUNK_VOXELS", 2 * 9 * 7)  # two slices of one channel
    image = scan(shape=(1, 9, 7, 40))
    full = image.numel() * image.element_size()
    for transform, bound in ((NormalizeIntensity(nonzero=True), None), (LeanNormalizeIntensity(nonzero=True), 0.1)):
        copy = image.clone()
        with LargestNewTensor() as tracker:
            transform(copy)
        if bound is None:
            assert tracker.largest >= 0.5 * full  # its copies of the nonzero voxels
        else:
            assert tracker.largest <= bound * full, tracker.largest
