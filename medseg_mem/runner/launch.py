"""``medseg-mem run --nproc N``: start the same command under ``torchrun`` with N processes on this machine.

The command line is the user's own, less ``--nproc``: ``python -m torch.distributed.run --standalone
--nproc_per_node N -m medseg_mem run ...``. Each process then joins the group as under a hand-typed torchrun
(:mod:`~medseg_mem.training.distributed`). Several machines need torchrun's own rendezvous options
(``--nnodes``, ``--rdzv-endpoint``): call torchrun directly there (docs/guide.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import List, Sequence

from medseg_mem.core.errors import OptionError


def torchrun_command(nproc: int, args: Sequence[str]) -> List[str]:
    """The torchrun command line that runs ``medseg-mem run ARGS`` in ``nproc`` processes on this machine."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    return [*launcher, "-m", "medseg_mem", "run", *args]


def without_option(args: Sequence[str], option: str) -> List[str]:
    """``args`` less ``option VALUE`` and ``option=VALUE`` (every occurrence)."""
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            kept.append(arg)
    return kept


def check_not_launched(nproc: int) -> None:
    """Refuse ``--nproc`` inside a torchrun launch: the processes exist already.

    Raises:
        OptionError: when ``WORLD_SIZE`` says this process is one of several.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        rule = (f"starts torchrun itself, but this process already runs under torchrun (WORLD_SIZE={world}); drop "
                f"--nproc there: torchrun's --nproc_per_node sets the count")
        raise OptionError("--nproc", rule, nproc)


def relaunch(nproc: int, args: Sequence[str]) -> int:
    """Run ``medseg-mem run ARGS`` (``--nproc`` removed) in ``nproc`` processes; return torchrun's exit code.

    The processes print to this terminal (rank 0 alone shows progress and results).
    """
    check_not_launched(nproc)
    return subprocess.run(torchrun_command(nproc, without_option(args, "--nproc"))).returncode
