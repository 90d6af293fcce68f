"""Resampling and guidance encodings of the cascade."""

import torch

from medseg_mem.resample import encode_guidance, resample_label, round_trip_label, scaled_size


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
