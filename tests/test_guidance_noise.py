"""Guidance noise: each morphological operation does what its name says, and a perturbed label stays a label."""

import numpy as np
import pytest
import torch

from medseg_mem.training.guidance_noise import OPERATIONS, morph, perturb_label


def mask_of(points, size=7):
    mask = torch.zeros(1, 1, size, size, size)
    for point in points:
        mask[(0, 0) + tuple(point)] = 1
    return mask


def test_dilation_of_a_voxel_is_a_cube_and_erosion_takes_it_back():
    cube = morph(mask_of([(3, 3, 3)]), "dilate")
    assert cube.sum() == 27 and torch.equal(cube[0, 0, 2:5, 2:5, 2:5], torch.ones(3, 3, 3))
    assert torch.equal(morph(cube, "erode"), mask_of([(3, 3, 3)]))


def test_opening_removes_a_lone_voxel_and_closing_fills_a_one_voxel_gap():
    assert morph(mask_of([(3, 3, 3)]), "open").sum() == 0
    closed = morph(mask_of([(3, 3, 2), (3, 3, 4)]), "close")
    assert closed[0, 0, 3, 3, 3] == 1 and closed.sum() == 3


def rods():
    label = torch.zeros(1, 9, 9, 12, dtype=torch.uint8)
    label[0, 2:4, 2:4, 1:10] = 1
    label[0, 6:8, 6:8, 3:7] = 2
    return label


def test_probability_zero_leaves_the_label_as_it_is():
    label = rods()
    assert torch.equal(perturb_label(label, 3, 0.0, np.random.RandomState(0)), label)


@pytest.mark.parametrize("seed", range(6))
def test_a_perturbed_label_stays_within_one_voxel_of_each_class(seed):
    label, before = rods(), rods()
    noisy = perturb_label(label, 3, 1.0, np.random.RandomState(seed))
    assert torch.equal(label, before)  # the cached label is not touched
    assert noisy.dtype == torch.uint8 and set(noisy.unique().tolist()) <= {0, 1, 2}
    for cls in (1, 2):
        grown = morph((label == cls)[None].float(), "dilate")[0] > 0
        assert not bool(((noisy == cls) & ~grown).any())


def test_the_same_random_state_gives_the_same_noise_and_others_differ():
    noisy = [perturb_label(rods(), 3, 1.0, np.random.RandomState(seed)) for seed in range(8)]
    assert torch.equal(noisy[0], perturb_label(rods(), 3, 1.0, np.random.RandomState(0)))
    assert len({tuple(n.flatten().tolist()) for n in noisy}) > 2
    assert len(OPERATIONS) == 4
