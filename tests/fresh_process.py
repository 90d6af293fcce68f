"""Training in a fresh interpreter, as a user's ``medseg-mem run`` does: what repeatability is checked against."""

import subprocess
import sys

from hang_guard import HANG_GUARD_S
from medseg_mem.core.files.checkpoint import load_checkpoint

RUN = ["run", "--variant", "full", "--steps", "3", "--val-every", "3", "--channels", "2,4", "--quiet"]


def train_in_new_process(prepared, folder, seed, *options):
    """``medseg-mem run`` (with ``options``) in a fresh interpreter; returns the run's best weights."""
    args = [*RUN, "--seed", str(seed), "--data", str(prepared), "--runs", str(folder / "runs"),
            "--results", str(folder / "results.csv"), *options]  # fmt: skip
    code = "import sys; from medseg_mem.cli import main; main(sys.argv[1:])"
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stderr[-2000:]
    (best,) = (folder / "runs").glob("*/full/best.pt")
    return load_checkpoint(best)["state_dict"]
