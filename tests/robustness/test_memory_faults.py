"""Faults around the planner's calibration, through the CLI of the commands that plan without being asked to.

Each row runs ``medseg-mem`` in-process and must end with a non-zero exit, one ``Error:`` line that names what is
at fault in the words of the command that failed (``predict`` and ``run`` have no ``--calibration`` option), no
traceback, and no calibration measured where the answer did not need one.

* (issue 25, 17) a calibration cache that is a folder: the line names ``MEDSEG_MEM_CACHE``, not ``--calibration``;
* (issue 25, 18) ``predict --variant auto --budget 1KB`` says at once that nothing fits: no calibration.
"""

from __future__ import annotations

import re

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List

import pytest
from click.testing import CliRunner

from medseg_mem.cli import main
from test_predict import bright_scan, make_run, save_tilted


@dataclass(frozen=True)
class Row:
    """One fault: ``build(tmp_path, monkeypatch)`` returns the command's arguments; ``expect`` (a regular expression)
    must match in the error line, ``refuse`` must not be in it; ``measures``: whether a calibration may be measured
    on the way."""

    name: str
    build: Callable
    expect: str
    refuse: str = ""
    measures: bool = False


def folder_cache(tmp_path: Path, monkeypatch) -> Path:
    """A user cache whose calibration file is a folder."""
    monkeypatch.setenv("MEDSEG_MEM_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "calibration.json").mkdir(parents=True)
    return tmp_path


def predict_with_folder_cache(tmp_path: Path, monkeypatch) -> List[str]:
    folder_cache(tmp_path, monkeypatch)
    run, scan = make_run(tmp_path), save_tilted(bright_scan(), tmp_path / "scan.nii.gz")
    return ["predict", "--quiet", "--checkpoint", str(run), str(scan), "--out", str(tmp_path / "out"), "--budget",
            "400MiB"]  # fmt: skip


def run_with_folder_cache(tmp_path: Path, monkeypatch) -> List[str]:
    from medseg_mem.data.synthetic import TASK_FOLDER, write_default_task
    from medseg_mem.data.prepare import prepare
    from medseg_mem.core.prepare_config import PrepareConfig

    task = write_default_task(tmp_path / "task" / TASK_FOLDER, seed=0, n_cases=6)
    prepare(PrepareConfig(task_dir=task, out_dir=tmp_path / "prepared", seed=0), progress=False)
    folder_cache(tmp_path, monkeypatch)
    return ["run", "--data", str(tmp_path / "prepared"), "--variant", "patch", "--channels", "2,4", "--steps", "1",
            "--results", str(tmp_path / "r.csv"), "--runs", str(tmp_path / "runs"), "--quiet"]  # fmt: skip


def auto_with_a_tiny_budget(tmp_path: Path, monkeypatch) -> List[str]:
    monkeypatch.setenv("MEDSEG_MEM_CACHE", str(tmp_path / "empty-cache"))  # nothing cached: it would measure
    for variant in ("full", "patch", "cascade"):
        make_run(tmp_path / "runs", variant)
    scan = save_tilted(bright_scan(), tmp_path / "scan.nii.gz")
    return ["predict", "--quiet", "--checkpoint", str(tmp_path / "runs"), str(scan), "--out", str(tmp_path / "out"),
            "--variant", "auto", "--budget", "1KB"]  # fmt: skip


ROWS = [
    Row("predict: calibration cache is a folder", predict_with_folder_cache,
        r"calibration\.json: cannot be read: it is a folder, not a file; delete it to measure again, or set "
        "MEDSEG_MEM_CACHE to another folder", refuse="--calibration"),
    Row("run: calibration cache is a folder", run_with_folder_cache,
        r"calibration\.json: cannot be read: it is a folder, not a file", refuse="--calibration"),
    # on this tiny scan every variant's bound is the process, one network's weights and loading the scan: a tie
    Row("predict --variant auto --budget 1KB", auto_with_a_tiny_budget,
        "--budget 1000 B: no variant fits; the smallest, (full|patch|cascade), needs at least"),
]  # fmt: skip


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_memory_fault(tmp_path, monkeypatch, row):
    import medseg_mem.memory.calibration as calibration

    measured = []
    monkeypatch.setattr(calibration, "calibrate", lambda *args, **kwargs: measured.append(args) or 1 / 0)
    result = CliRunner().invoke(main, row.build(tmp_path, monkeypatch))
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and re.search(row.expect, errors[0]), result.output
    assert not row.refuse or row.refuse not in errors[0]
    assert row.measures or not measured
