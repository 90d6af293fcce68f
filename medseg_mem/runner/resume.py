"""Resuming a run: it continues on its saved dataset, files its rows once, and is never trained twice.

``run.json`` records the run's dataset (``data_dir``) and results CSV (``results``) as absolute paths.
``--resume RUN`` uses that dataset (another ``--data`` is refused: rows would be filed under the wrong dataset)
and, unless ``--results`` is given, that CSV. A run whose rows are in the results CSV already is finished:
resuming it reports where its rows are instead of appending them a second time. A run whose training finished
but whose rows are missing (the write failed, or the process died while evaluating) trains no further step on
resume: each stage's ``last.pt`` is at the final step, so only evaluation runs.

Example:
    >>> record = load_run_record(Path("medseg-work/runs") / run_id)  # doctest: +SKIP
    >>> request = resumed_request(request, record)  # doctest: +SKIP
    >>> filed_rows(request.results, run_id)  # doctest: +SKIP
    0
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from pathlib import Path
from typing import Any, Dict, Optional

from medseg_mem.core.config import RunRequest
from medseg_mem.core.errors import MedsegError
from medseg_mem.core.locations import default_prepared


def saved_data_dir(record: Dict[str, Any], run_dir: Path) -> Path:
    """The prepared dataset ``run.json`` names.

    Raises:
        MedsegError: the record names no dataset.
    """
    value = record.get("data_dir")
    if not isinstance(value, str) or not value:
        raise MedsegError(f"{Path(run_dir) / 'run.json'}: records no data_dir, so the run cannot be resumed; "
                          "start a new run instead")
    return Path(value)


def saved_results(record: Dict[str, Any]) -> Optional[Path]:
    """The results CSV ``run.json`` names, or ``None`` for runs recorded before it was saved."""
    value = record.get("results")
    return Path(value) if isinstance(value, str) and value else None


def same_path(first: Path, second: Path) -> bool:
    """True when both name the same location (relative paths are taken from the current folder)."""
    return os.path.abspath(first) == os.path.abspath(second)


def resumed_request(request: RunRequest, record: Dict[str, Any]) -> RunRequest:
    """``request`` with the run's saved dataset (and results CSV, where ``request`` keeps the default).

    Raises:
        MedsegError: ``request`` names another dataset than the run's.
    """
    run_dir = Path(request.runs_dir) / str(request.resume)
    saved = saved_data_dir(record, run_dir)
    if not same_path(request.data_dir, default_prepared()) and not same_path(request.data_dir, saved):
        raise MedsegError(f"--data {request.data_dir}: run {request.resume} was trained on {saved} and resumes "
                          "on it; drop --data (or start a new run on the other dataset)")
    return dataclasses.replace(request, data_dir=saved)


def filed_rows(results: Path, run_id: str) -> int:
    """How many rows of ``run_id`` the results CSV at ``results`` holds (0 when it is missing or empty)."""
    results = Path(results)
    if not results.is_file():
        return 0
    text = results.read_bytes().decode("utf-8-sig", errors="replace")
    return sum(1 for row in csv.DictReader(io.StringIO(text)) if row.get("run_id") == run_id)
