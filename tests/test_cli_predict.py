"""``medseg-mem predict`` in-process with ``CliRunner``: output line, failures by name, exit codes, lazy imports."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from medseg_mem.cli import main
from test_predict import analytic, bright_scan, make_run, save_tilted  # noqa: F401 - analytic is a fixture


def invoke(*args: str):
    return CliRunner().invoke(main, ["predict", "--quiet", *args])


def test_predicts_into_out_and_prints_one_summary_line(tmp_path, analytic):  # noqa: F811
    run, scan = make_run(tmp_path), save_tilted(bright_scan(), tmp_path / "scan.nii.gz")
    result = invoke("--checkpoint", str(run), str(scan), "--out", str(tmp_path / "out"), "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("predicted 1 of 1 scan(s) with patch") and "on cpu (fp32)" in result.output
    assert "; peak resident memory of the process " in result.output  # measured in the process, as plan predicts it
    out = nib.load(str(tmp_path / "out" / "scan_seg.nii.gz"))
    np.testing.assert_array_equal(np.asarray(out.dataobj), bright_scan() > 50)


def test_a_corrupt_scan_is_named_the_others_written_and_the_exit_code_set(tmp_path, analytic):  # noqa: F811
    run, folder = make_run(tmp_path), tmp_path / "scans"
    good = save_tilted(bright_scan(), folder / "good.nii.gz")
    (folder / "broken.nii.gz").write_bytes(good.read_bytes()[:100])
    result = invoke("--checkpoint", str(run), str(folder), "--out", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "failed: " in result.stderr and "broken.nii.gz: cannot be read as NIfTI" in result.stderr
    assert "predicted 1 of 2 scan(s)" in result.stdout
    assert "Error: 1 of 2 scan(s) failed:" in result.stderr and "broken.nii.gz" in result.stderr.splitlines()[-1]
    assert (tmp_path / "out" / "good_seg.nii.gz").is_file()


def test_a_checkpoint_of_the_wrong_kind_is_a_one_line_error(tmp_path):
    other = tmp_path / "model.pt"
    torch.save({"state": torch.ones(1)}, other)
    scan = save_tilted(bright_scan(), tmp_path / "scan.nii.gz")
    result = invoke("--checkpoint", str(other), str(scan), "--out", str(tmp_path / "out"))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0 and "not a medseg-mem checkpoint" in result.output


def test_existing_output_needs_overwrite(tmp_path, analytic):  # noqa: F811
    run, scan = make_run(tmp_path), save_tilted(bright_scan(), tmp_path / "scan.nii.gz")
    args = ("--checkpoint", str(run), str(scan), "--out", str(tmp_path / "out"))
    assert invoke(*args).exit_code == 0
    refused = invoke(*args)
    assert refused.exit_code == 1 and "pass --overwrite" in refused.output
    assert invoke(*args, "--overwrite").exit_code == 0


def test_missing_options_are_usage_errors(tmp_path):
    assert invoke(str(tmp_path)).exit_code == 2  # no --checkpoint / --out
    result = invoke("--checkpoint", str(tmp_path), "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and "INPUT" in result.output


def test_the_command_module_imports_neither_torch_nor_monai():
    code = "import sys, medseg_mem.cli.predict; print(sorted({'torch', 'monai'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_scan_whose_header_claims_petabytes_is_named_without_reading_it(tmp_path, analytic):  # noqa: F811
    """A NIfTI-2 header declaring 100000^3 voxels: one line with the dimensions, not a MemoryError."""
    run, folder = make_run(tmp_path), tmp_path / "scans"
    save_tilted(bright_scan(), folder / "good.nii.gz")
    header = nib.Nifti2Image(np.zeros((8, 8, 6), np.float32), np.eye(4)).header
    header["dim"][1:4] = 100000
    (folder / "huge.nii").write_bytes(header.binaryblock + b"\0" * 4 + b"\0" * 64)
    result = invoke("--checkpoint", str(run), str(folder), "--out", str(tmp_path / "out"))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "huge.nii: its header declares 100000x100000x100000 voxels" in result.stderr
    assert "predicted 1 of 2 scan(s)" in result.stdout and not (tmp_path / "out" / "huge_seg.nii.gz").exists()


@pytest.mark.parametrize(
    "option, value", [("--overlap", "0.9"), ("--overlap", "-1"), ("--precision", "int4"), ("--sw-batch-size", "0")]
)
def test_bad_inference_levers_are_one_line_usage_errors(tmp_path, option, value):
    result = invoke("--checkpoint", str(tmp_path), str(tmp_path / "scan.nii.gz"), "--out", str(tmp_path / "o"),
                    option, value)  # fmt: skip
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert result.exit_code == 2 and len(errors) == 1 and option in errors[0] and "Traceback" not in result.output
