"""A run's seed reproduces its weights bit for bit across fresh interpreters (no hidden global state decides a
weight). That another seed gives other weights needs no second interpreter: ``test_train.py`` checks it in process."""

import pytest
import torch

from fresh_process import train_in_new_process

pytestmark = pytest.mark.slow  # fresh interpreters that train: end to end


def test_same_seed_in_two_processes_gives_identical_weights(seed_7_weights, tiny_prepared, tmp_path):
    second = train_in_new_process(tiny_prepared.root, tmp_path / "b", seed=7)
    assert seed_7_weights.keys() == second.keys()
    assert all(torch.equal(seed_7_weights[name], second[name]) for name in seed_7_weights)

