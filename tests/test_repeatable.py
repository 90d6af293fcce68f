"""A run's seed reproduces its weights bit for bit across fresh interpreters (no hidden global state decides a
weight), also with a wall clock that is never reached. That another seed gives other weights needs no second
interpreter: ``test_train.py`` checks it in process. (Both tests compare with one seed-7 run, trained once per
worker: keep them in this file.)"""

import pytest
import torch

from fresh_process import train_in_new_process

pytestmark = pytest.mark.slow  # fresh interpreters that train: end to end


def test_same_seed_in_two_processes_gives_identical_weights(seed_7_weights, tiny_prepared, tmp_path):
    second = train_in_new_process(tiny_prepared.root, tmp_path / "b", seed=7)
    assert seed_7_weights.keys() == second.keys()
    assert all(torch.equal(seed_7_weights[name], second[name]) for name in seed_7_weights)


def test_a_time_limit_and_snapshots_never_reached_change_no_bit(seed_7_weights, tiny_prepared, tmp_path):
    """The wall clock only acts when it is reached, so the default run trains exactly as before --time-limit
    existed (and a run's seed still fixes its weights)."""
    timed = train_in_new_process(tiny_prepared.root, tmp_path / "timed", 7, "--time-limit", "600", "--snapshots", "300")
    assert all(torch.equal(seed_7_weights[name], timed[name]) for name in seed_7_weights)
