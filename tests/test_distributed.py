"""``torchrun`` training: two CPU processes (gloo) train like one process with their global batch, end with the
same weights on both ranks, write one set of checkpoints and rows, and resume a stopped run exactly."""

import json
import socket
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch

from medseg_mem.core.files.checkpoint import load_checkpoint
from hang_guard import HANG_GUARD_S

RUN = ["run", "--variant", "full", "--val-every", "3", "--channels", "2,4", "--quiet", "--lr-schedule", "constant",
       "--seed", "7"]  # fmt: skip

# Each rank saves the weights it ends with (the network handed to DistributedDataParallel) as rank<RANK>.pt.
RANKS = textwrap.dedent(
    """
    import atexit, os, sys
    import torch
    from medseg_mem.training import distributed

    nets = []
    wrap = distributed.wrap
    distributed.wrap = lambda net, device: nets.append(net) or wrap(net, device)
    if __name__ == "__main__":  # measure_peak's spawned child imports this file again
        saved = f"{sys.argv[1]}/rank{os.environ.get('RANK', '0')}.pt"
        atexit.register(lambda: torch.save(nets[-1].state_dict(), saved))
        from medseg_mem.cli import main
        main(sys.argv[2:], prog_name="medseg-mem")
    """
)

# Not exact on CPU: PyTorch's SyncBatchNorm is CUDA-only, so each rank normalises with its own batch's statistics
# (batch 1 here, batch 2 in the single process), and DDP's all-reduce adds in another order. Measured after 3 steps
# (lr 3e-3): weights 1.1 % apart (relative L2 over all parameters), step-3 losses 3e-5 apart (relative), the same
# validation Dice. The bounds leave room for other CPUs' rounding.
WEIGHTS_TOLERANCE, LOSS_TOLERANCE = 0.03, 1e-3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(folder, args, nproc=2):
    """``torchrun --nproc_per_node nproc`` (or a plain process for 1) of the CLI; returns the output."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "ranks.py"
    script.write_text(RANKS)
    runner = ["-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc), "--master_addr",
              "127.0.0.1", "--master_port", str(free_port())] if nproc > 1 else []  # fmt: skip
    done = subprocess.run([sys.executable, *runner, str(script), str(folder), *args], capture_output=True, text=True,
                          timeout=HANG_GUARD_S)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def paths(prepared, folder):
    return ["--data", str(prepared), "--runs", str(folder / "runs"), "--results", str(folder / "results.csv")]


@pytest.fixture(scope="module")
def two_ranks(prepared_default, tmp_path_factory):
    """A 3-step run of 2 ranks x batch 1."""
    folder = tmp_path_factory.mktemp("ddp")
    out = launch(folder, [*RUN, "--steps", "3", "--batch-size", "1", *paths(prepared_default, folder)])
    return folder, out


@pytest.mark.slow
def test_two_ranks_write_once_and_end_with_the_same_weights(two_ranks):
    folder, out = two_ranks
    (run,) = (folder / "runs").iterdir()
    assert sorted(p.name for p in (run / "full").glob("*.pt")) == ["best.pt", "last.pt"]
    assert (run / "run.json").is_file() and out.count("test Dice") == 1
    rows = pd.read_csv(folder / "results.csv")
    assert len(rows) == 2 and set(rows.run_id) == {run.name}  # one row per foreground class, rank 0's only
    ranks = [torch.load(folder / f"rank{r}.pt") for r in (0, 1)]
    saved = load_checkpoint(run / "full" / "last.pt")["state_dict"]
    for name in saved:
        assert torch.equal(ranks[0][name], ranks[1][name]) and torch.equal(ranks[0][name], saved[name]), name


@pytest.mark.slow
def test_two_ranks_train_like_one_process_with_the_global_batch(two_ranks, prepared_default, tmp_path):
    folder, _ = two_ranks
    launch(tmp_path, [*RUN, "--steps", "3", "--batch-size", "2", *paths(prepared_default, tmp_path)], nproc=1)
    (one,) = (tmp_path / "runs").glob("*/full/last.pt")
    (two,) = (folder / "runs").glob("*/full/last.pt")
    one, two = load_checkpoint(one), load_checkpoint(two)
    names = [n for n in one["state_dict"] if "running" not in n and "num_batches" not in n]  # the parameters
    flat = [torch.cat([c["state_dict"][n].double().flatten() for n in names]) for c in (one, two)]
    assert (flat[0] - flat[1]).norm() / flat[0].norm() < WEIGHTS_TOLERANCE
    (first,), (second,) = one["history"], two["history"]
    assert abs(first["loss"] - second["loss"]) / abs(first["loss"]) < LOSS_TOLERANCE
    assert first["dice"] == pytest.approx(second["dice"], abs=0.02)
    assert not torch.equal(flat[0], flat[1])  # not a single process in disguise


@pytest.mark.slow
def test_a_stopped_two_rank_run_resumes_as_if_never_stopped(two_ranks, prepared_default, tmp_path):
    """A run stopped after step 3 of 6 leaves last.pt at step 3, run.json and no rows: the finished 3-step run,
    told it has 6 steps (constant learning rate, so steps 1-3 are the same), is that state."""
    folder, _ = two_ranks
    (run,) = (folder / "runs").iterdir()
    stopped = tmp_path / "stopped"
    (stopped / "runs").mkdir(parents=True)
    subprocess.run(["cp", "-r", str(run), str(stopped / "runs")], check=True)
    record = json.loads((run / "run.json").read_text())
    record["train"]["steps"], record["results"] = 6, str(stopped / "results.csv")
    (stopped / "runs" / run.name / "run.json").write_text(json.dumps(record))
    launch(stopped, ["run", "--resume", run.name, "--runs", str(stopped / "runs"), "--quiet"])
    straight = tmp_path / "straight"
    launch(straight, [*RUN, "--steps", "6", "--batch-size", "1", *paths(prepared_default, straight)])
    resumed = load_checkpoint(stopped / "runs" / run.name / "full" / "last.pt")
    (whole,) = (straight / "runs").glob("*/full/last.pt")
    whole = load_checkpoint(whole)
    assert resumed["step"] == whole["step"] == 6
    assert all(torch.equal(resumed["state_dict"][n], whole["state_dict"][n]) for n in whole["state_dict"])
    assert len(pd.read_csv(stopped / "results.csv")) == 2


def test_ranks_share_each_global_batch_disjointly():
    """Rank r's items of step s are samples s*B*N + r*B ... (+B-1): together one process's batch of B*N."""
    from medseg_mem.training.sampling import StepSamples

    def indices(rank, world, batch, first_step, steps):
        samples = StepSamples(None, None, 0, 0, first_step * batch, steps * batch, batch, rank, world)
        return [samples.sample_index(k) for k in range(len(samples))]

    ranks = [indices(r, 3, 2, 1, 4) for r in range(3)]
    assert ranks[0] == [6, 7, 12, 13, 18, 19] and ranks[2] == [10, 11, 16, 17, 22, 23]
    assert sorted(sum(ranks, [])) == indices(0, 1, 6, 1, 4) == list(range(6, 24))


@pytest.mark.parametrize("given", [["--nproc", "2"], ["--nproc=2"]])
def test_nproc_hands_the_same_command_to_torchrun(monkeypatch, given):
    from click.testing import CliRunner

    from medseg_mem.cli import main

    started = []
    monkeypatch.setattr("medseg_mem.runner.launch.subprocess.run",
                        lambda command: started.append(command) or subprocess.CompletedProcess(command, 3))  # fmt: skip
    result = CliRunner().invoke(main, ["run", "--variant", "full", *given, "--steps", "3"])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    assert started == [[*torchrun, "-m", "medseg_mem", "run", "--variant", "full", "--steps", "3"]]
    assert result.exit_code == 3  # torchrun's exit status is the command's


@pytest.mark.parametrize("nproc, world, message", [
    ("0", "1", "Invalid value for '--nproc': 0 is not in the range x>=1"),
    ("2", "2", "--nproc starts torchrun itself, but this process already runs under torchrun (WORLD_SIZE=2)"),
])  # fmt: skip
def test_bad_nproc_is_a_one_line_error(monkeypatch, nproc, world, message):
    from click.testing import CliRunner

    from medseg_mem.cli import main

    monkeypatch.setenv("WORLD_SIZE", world)
    monkeypatch.setattr("medseg_mem.runner.launch.subprocess.run", pytest.fail)
    result = CliRunner().invoke(main, ["run", "--nproc", nproc])
    assert result.exit_code != 0 and message in result.output
    assert [line for line in result.output.splitlines() if line.startswith("Error")] == [result.output.splitlines()[-1]]
