"""Resampling and guidance encodings of the cascade."""

import torch

from medseg_mem.variants.resample import encode_guidance, one_hot, resample_label, round_trip_label, scaled_size


def test_scaled_size_rounds_and_keeps_one_voxel():
    assert scaled_size((32, 32, 96), 0.3) == (10, 10, 29)
    assert scaled_size((1, 2, 3), 0.1) == (1, 1, 1)


def test_label_resampling_keeps_thin_structures():
    label = torch.zeros(1, 1, 20, 20, 20, dtype=torch.long)
    label[..., 9:12, 9:12, :] = 2  # a rod 3 voxels wide
    low = resample_label(label, (6, 6, 6), 3)
    assert (low == 2).any() and low.dtype == torch.long


def test_round_trip_keeps_size_and_classes():
    label = torch.zeros(1, 1, 16, 16, 30, dtype=torch.long)
    label[..., 4:10, 4:10, 2:20] = 1
    back = round_trip_label(label, 0.3, 2)
    assert back.shape == label.shape
    overlap = ((back == 1) & (label == 1)).sum() / (label == 1).sum()
    assert overlap > 0.7


def test_guidance_encodings():
    label = torch.tensor([0, 1, 2]).view(1, 1, 1, 1, 3)
    assert encode_guidance(label, "label", 3).flatten().tolist() == [0.0, 0.5, 1.0]
    onehot = encode_guidance(label, "onehot", 3)
    assert onehot.shape == (1, 2, 1, 1, 3) and onehot[0, :, 0, 0].tolist() == [[0, 1, 0], [0, 0, 1]]


def test_one_hot_is_the_float_one_hot_of_each_label_map_dtype():
    """MONAI's one_hot (re-exported by medseg_mem.variants.resample) equals torch's, channel-first and float32."""
    label = torch.randint(0, 4, (2, 1, 7, 9, 5))
    expected = torch.nn.functional.one_hot(label[:, 0], 4).movedim(-1, 1).float()
    for dtype in (torch.uint8, torch.int32, torch.int64, torch.float32):
        encoded = one_hot(label.to(dtype), 4)
        assert encoded.dtype == torch.float32 and encoded.shape == (2, 4, 7, 9, 5)
        assert torch.equal(encoded, expected)
