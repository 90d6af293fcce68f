"""``medseg-mem prepare`` in-process with click's CliRunner: help, success, one-line errors, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from medseg_mem.cli import main

SWIG_IMPORT_WARNINGS = "ignore:builtin type [Ss]wig.* has no __module__ attribute:DeprecationWarning"


def invoke(*args):
    return CliRunner().invoke(main, ["prepare", *map(str, args)])


def assert_one_line_error(result, code, *fragments):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    error_lines = [line for line in lines if line.startswith("Error:")]
    assert len(error_lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in error_lines[0], error_lines[0]


def test_help_lists_the_options():
    result = CliRunner().invoke(main, ["prepare", "--help"])
    assert result.exit_code == 0
    for option in ("TASK_DIR", "--out", "--reader", "nibabel|itk", "--spacing", "--crop-foreground", "--seed"):
        assert option in result.output
    assert "--overwrite" in result.output and "medseg-work/prepared" in result.output
    assert "prepare" in CliRunner().invoke(main, ["--help"]).output


def test_success_prints_the_summary_line(make_msd_task, tmp_path):
    task = make_msd_task(tmp_path, n_cases=5)
    result = invoke(task, "--out", tmp_path / "out", "--seed", 3, "--crop-foreground")
    assert result.exit_code == 0, result.output
    summary = result.stdout.strip().splitlines()
    assert len(summary) == 1
    assert summary[0].startswith(f"prepared 5 cases of Tiny into {tmp_path / 'out'}: 3 classes")
    assert "shapes" in summary[0] and "split 3/1/1" in summary[0] and summary[0].endswith(" s")
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["split"] == {"seed": 3}
    assert "prepare" in result.stderr  # the tqdm progress bar goes to stderr


def test_spacing_option(make_msd_task, tmp_path):
    task = make_msd_task(tmp_path, n_cases=3)
    assert invoke(task, "--out", tmp_path / "a", "--spacing", "1,1,2").exit_code == 0
    assert invoke(task, "--out", tmp_path / "b", "--spacing", "median").exit_code == 0
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["preprocessing"]["spacing"] == [1.0, 1.0, 2.0]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--spacing", "1,2"], "must be 'median' or three positive numbers"),
        (["--spacing", "1,0,1"], "must be 'median' or three positive numbers"),
        (["--reader", "simpleitk"], "'simpleitk' is not one of 'nibabel', 'itk'"),
        (["--seed", "-1"], "-1 is not in the range x>=0"),
    ],
)
def test_bad_option_values_exit_2(make_msd_task, tmp_path, args, fragment):
    result = invoke(make_msd_task(tmp_path), "--out", tmp_path / "out", *args)
    assert result.exit_code == 2 and fragment in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_bad_task_gives_a_one_line_error(make_msd_task, tmp_path):
    task = make_msd_task(tmp_path)
    (task / "labelsTr" / "tiny_002.nii.gz").unlink()
    result = invoke(task, "--out", tmp_path / "out")
    assert_one_line_error(result, 1, str(task), "training[2] label", "file not found")
    assert not (tmp_path / "out").exists()


def test_missing_task_folder(tmp_path):
    result = invoke(tmp_path / "Task05_Missing", "--out", tmp_path / "out")
    assert_one_line_error(result, 1, "Task05_Missing: no such folder")


def test_several_problems_listed(make_msd_task, tmp_path):
    task = make_msd_task(tmp_path, n_cases=3)
    for name in ("tiny_000", "tiny_002"):
        (task / "imagesTr" / f"{name}.nii.gz").write_bytes(b"junk")
    result = invoke(task, "--out", tmp_path / "out")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "2 problem(s)" in result.stderr
    assert "imagesTr/tiny_000.nii.gz" in result.stderr and "imagesTr/tiny_002.nii.gz" in result.stderr


def test_foreign_output_refused_then_overwritten(make_msd_task, tmp_path):
    task = make_msd_task(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    assert_one_line_error(invoke(task, "--out", tmp_path / "out"), 1, "--out", "keep.txt", "--overwrite")
    assert invoke(task, "--out", tmp_path / "out", "--overwrite").exit_code == 0


@pytest.mark.filterwarnings(SWIG_IMPORT_WARNINGS)
def test_itk_reader(make_msd_task, tmp_path):
    task = make_msd_task(tmp_path, n_cases=3)
    result = invoke(task, "--out", tmp_path / "out", "--reader", "itk")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["preprocessing"]["reader"] == "itk"


def test_default_task_twice_in_the_working_folder(tmp_path, monkeypatch):
    """``medseg-mem prepare`` with no arguments works, and works again (derived data is replaced)."""
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        result = CliRunner().invoke(main, ["prepare"])
        assert result.exit_code == 0, result.output
        assert "prepared 48 cases of SyntheticRods into medseg-work/prepared: 3 classes" in result.stdout
        assert "shapes 32x32x96, split 28/10/10" in result.stdout
    assert sorted(p.name for p in (tmp_path / "medseg-work").iterdir()) == ["Task00_SyntheticRods", "prepared"]


def test_importing_the_cli_does_not_import_torch():
    code = "import sys, medseg_mem.cli; print(sorted({'torch', 'monai', 'nibabel', 'itk'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_disk_that_fills_midway_leaves_the_prepared_folder_as_it_was(tmp_path, monkeypatch):
    """``np.save`` fails with ENOSPC on the fifth array: one error line naming the file, the old output intact."""
    import errno
    import hashlib
    import os

    import medseg_mem.data.prepared as prepared_module
    from medseg_mem.data.synthetic import write_default_task

    task, out = write_default_task(tmp_path / "task", seed=0, n_cases=6), tmp_path / "out"
    assert invoke(task, "--out", out).exit_code == 0

    def digest(folder):
        return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}

    before, real, calls = digest(out), prepared_module.np.save, []

    def filling(path, array, **options):
        calls.append(path)
        if len(calls) == 5:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, array, **options)

    monkeypatch.setattr(prepared_module.np, "save", filling)
    result = invoke(task, "--out", out, "--overwrite")
    assert_one_line_error(result, 1, "--out", "No space left on device", Path(calls[-1]).name, "unchanged")
    assert digest(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out", "task"]
