"""Which run each variant serves: the runs ``medseg-mem label --run`` named, until a train task publishes a newer
one into ``<app>/model/<variant>.json`` (``{"run": "<run folder>"}``, written atomically), which every inference
reads afresh. Free of ``monailabel``.

Example:
    >>> runs = served_runs([Path("medseg-work/runs/<run id>")])  # {"patch": Path(...)}  # doctest: +SKIP
    >>> current_run(Path("app"), "patch", runs["patch"])  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Sequence

from medseg_mem.core.errors import MedsegError
from medseg_mem.core.files.atomic import write_json_atomic
from medseg_mem.variants.trained_run import open_trained_run

#: The ``--conf`` key of ``start_server`` naming the runs to serve, comma-separated.
RUNS_KEY = "runs"


def served_runs(runs: Sequence[Path]) -> Dict[str, Path]:
    """``{variant: run folder}`` of the trained ``runs``, each opened and checked once.

    Raises:
        MedsegError: no run, a path that is not a trained run (the reason from
            :func:`~medseg_mem.variants.trained_run.open_trained_run`), or two runs of one variant.
    """
    if not runs:
        raise MedsegError("--run: give at least one trained run folder (medseg-work/runs/<run id>) to serve")
    served: Dict[str, Path] = {}
    for run in map(Path, runs):
        try:
            variant = open_trained_run(run).variant
        except MedsegError as error:  # predict's message names its own option
            raise MedsegError(str(error).replace("--checkpoint", "--run", 1)) from error
        if variant in served:
            raise MedsegError(f"--run: {served[variant]} and {run} are both {variant} runs; serve one run per variant")
        served[variant] = run.resolve()
    return served


def pointer_path(app_dir: Path, variant: str) -> Path:
    """Where the run ``variant`` serves now is recorded: ``<app_dir>/model/<variant>.json``."""
    return Path(app_dir) / "model" / f"{variant}.json"


def current_run(app_dir: Path, variant: str, initial: Path) -> Path:
    """The run ``variant`` serves now: the last one a train task published, else ``initial``."""
    pointer = pointer_path(app_dir, variant)
    if not pointer.is_file():
        return Path(initial)
    return Path(json.loads(pointer.read_text(encoding="utf-8"))["run"])


def publish(app_dir: Path, variant: str, run_dir: Path) -> Path:
    """Make ``run_dir`` the run ``variant`` serves from the next inference on (atomically)."""
    return write_json_atomic(pointer_path(app_dir, variant), {"run": str(Path(run_dir).resolve())})
