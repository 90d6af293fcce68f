"""A run's seed reproduces its weights bit for bit, across processes; another seed gives other weights."""

import pytest
import torch

from fresh_process import train_in_new_process

pytestmark = pytest.mark.slow  # fresh interpreters that train: end to end


def test_same_seed_in_two_processes_gives_identical_weights(seed_7_weights, tiny_prepared, tmp_path):
    second = train_in_new_process(tiny_prepared.root, tmp_path / "b", seed=7)
    assert seed_7_weights.keys() == second.keys()
    assert all(torch.equal(seed_7_weights[name], second[name]) for name in seed_7_weights)


def test_another_seed_gives_other_weights(seed_7_weights, tiny_prepared, tmp_path):
    other = train_in_new_process(tiny_prepared.root, tmp_path / "c", seed=8)
    assert not all(torch.equal(seed_7_weights[name], other[name]) for name in seed_7_weights)
