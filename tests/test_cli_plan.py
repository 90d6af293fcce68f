"""``medseg-mem plan`` through click: the table, ``--json``, and one-line errors for bad options."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from medseg_mem.cli import main
from medseg_mem.memory.calibration import Calibration, calibration_key, save_calibration

TINY = ["--channels", "4,8,16"]


@pytest.fixture
def calibration_file(tmp_path):
    """A tiny explicit calibration for the tiny widths, so no test measures anything."""
    key = calibration_key("cpu", (4, 8, 16))
    return str(save_calibration(tmp_path / "cal.json", Calibration(1.1, 50_000_000, key)))


def plan(*args):
    return CliRunner().invoke(main, ["plan", *args])


def test_table(calibration_file):
    result = plan("--shape", "1,64,64,48", "--classes", "3", "--budget", "8GB",
                  "--calibration", calibration_file, *TINY)  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "budget 8.0 GB (--budget)" in lines[0]
    assert lines[1].split() == ["variant", "predicted", "budget", "fits"]
    assert [line.split()[0] for line in lines[2:5]] == ["full", "patch", "cascade"]
    assert all(line.endswith("yes") for line in lines[2:5])
    assert "cpu-" in lines[-1]


def test_json_keys_and_single_variant(calibration_file):
    result = plan("--shape", "1,64,64,48", "--classes", "3", "--variant", "patch", "--json",
                  "--calibration", calibration_file, *TINY)  # fmt: skip
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert {"variant", "mode", "predicted_bytes", "budget_bytes", "fits"} <= set(row)
    assert row["variant"] == "patch" and row["mode"] == "inference" and row["budget_source"] == "available RAM"


def test_liver_like_full_does_not_fit(tmp_path):
    result = plan("--shape", "1,512,512,500", "--classes", "3", "--budget", "64GB", "--json", "--no-calibrate",
                  "--calibration", str(tmp_path / "none.json"))  # fmt: skip
    assert result.exit_code == 0, result.output
    fits = {row["variant"]: row["fits"] for row in json.loads(result.output)}
    assert fits == {"full": False, "patch": True, "cascade": True}


@pytest.mark.parametrize(
    "args, option",
    [
        (["--shape", "1,2,3"], "--shape"),
        (["--shape", "a,b,c,d"], "--shape"),
        (["--shape", "1,0,64,64"], "--shape"),
        (["--budget", "lots"], "--budget"),
        (["--budget", "-1GB"], "--budget"),
        (["--slab", "0"], "--slab"),
        (["--variant", "ful"], "--variant"),
    ],
)
def test_bad_options_give_one_line_errors(args, option):
    base = {"--shape": "1,64,64,48", "--classes": "3"}
    merged = dict(base, **dict(zip(args[::2], args[1::2])))
    result = plan(*[token for pair in merged.items() for token in pair])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and option in errors[0] and args[1] in errors[0]


def test_importing_the_command_does_not_import_torch():
    code = "import sys, medseg_mem.cli.plan; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
