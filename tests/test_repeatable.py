"""A run's seed reproduces its weights bit for bit, across processes; another seed gives other weights."""

import subprocess
import sys

import torch

from medseg_mem.core.files.checkpoint import load_checkpoint

RUN = ["run", "--variant", "full", "--steps", "3", "--val-every", "3", "--channels", "2,4", "--quiet"]


def train_in_new_process(prepared, folder, seed, *options):
    """``medseg-mem run`` (with ``options``) in a fresh interpreter; returns the run's best weights."""
    args = [*RUN, "--seed", str(seed), "--data", str(prepared), "--runs", str(folder / "runs"),
            "--results", str(folder / "results.csv"), *options]  # fmt: skip
    code = "import sys; from medseg_mem.cli import main; main(sys.argv[1:])"
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (best,) = (folder / "runs").glob("*/full/best.pt")
    return load_checkpoint(best)["state_dict"]


def test_same_seed_in_two_processes_gives_identical_weights(prepared_default, tmp_path):
    first = train_in_new_process(prepared_default, tmp_path / "a", seed=7)
    second = train_in_new_process(prepared_default, tmp_path / "b", seed=7)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_another_seed_gives_other_weights(prepared_default, tmp_path):
    first = train_in_new_process(prepared_default, tmp_path / "a", seed=7)
    other = train_in_new_process(prepared_default, tmp_path / "c", seed=8)
    assert not all(torch.equal(first[name], other[name]) for name in first)
