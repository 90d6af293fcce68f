"""Bad inputs to ``prepare``, ``plan``, ``compare`` and ``run``'s start, through the CLI, one table row each.

Every row runs ``medseg-mem`` in-process on tiny inputs written on the fly and must end either with a non-zero
exit and exactly one ``Error:`` line naming the file or option at fault, or - where the input is legal - with
exit 0 and an explicit ``warning:``/``note:`` line (or the plain answer). Never a traceback, and the input
files are byte-identical afterwards.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import gzip
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import pytest
from click.testing import CliRunner

from medseg_mem.cli import main
from medseg_mem.core.errors import MedsegError
from medseg_mem.report.results import RESULT_COLUMNS

from disk_faults import deny_reads

PLAN = ["plan", "--no-calibrate", "--budget", "8GB"]
TINY_PLAN = [*PLAN, "--shape", "1,16,16,16", "--classes", "2", "--channels", "4,8"]


@dataclass
class Env:
    """What a row's ``build`` works with: a scratch folder, the test fixtures, and the inputs to keep intact."""

    root: Path
    make_task: Callable
    write_nifti: Callable
    edit_json: Callable
    monkeypatch: pytest.MonkeyPatch
    inputs: List[Path] = field(default_factory=list)
    faults: List[Callable[[], None]] = field(default_factory=list)  # installed after the inputs' checksums
    cleanups: List[Callable[[], None]] = field(default_factory=list)

    def task(self, n_cases: int = 3, shape=(8, 8, 6), **options) -> Path:
        task = self.make_task(self.root, n_cases=n_cases, shape=shape, **options)
        self.inputs.append(task)
        return task

    def prepare(self, task: Path, *extra: str) -> List[str]:
        return ["prepare", str(task), "--out", str(self.root / "out"), *extra]

    def file(self, name: str, content: bytes) -> Path:
        folder = self.root / "inputs"
        folder.mkdir(exist_ok=True)
        (folder / name).write_bytes(content)
        self.inputs.append(folder)
        return folder / name


@dataclass(frozen=True)
class Row:
    """``build(env) -> CLI args``; ``expect`` must be in the error line (or, with ``code`` 0, in the output)."""

    name: str
    build: Callable[[Env], List[str]]
    expect: str
    code: int = 1
    check: Optional[Callable[[Env], None]] = None


# --- prepare ------------------------------------------------------------------------------------------------


def no_dataset_json(e: Env) -> List[str]:
    task = e.task()
    (task / "dataset.json").unlink()
    return e.prepare(task)


def invalid_dataset_json(e: Env) -> List[str]:
    task = e.task()
    (task / "dataset.json").write_text('{"name": "Tiny", "training": [')
    return e.prepare(task)


def listed(path_of: Callable[[Env, Path], str]) -> Callable[[Env], List[str]]:
    """A task whose first training image is listed as ``path_of(env, task)``."""

    def build(e: Env) -> List[str]:
        task = e.task()
        training = json.loads((task / "dataset.json").read_text())["training"]
        training[0]["image"] = path_of(e, task)
        e.edit_json(task, training=training)
        return e.prepare(task)

    return build


def symlink_outside(e: Env) -> List[str]:
    task = e.task()
    outside = e.file("outside.nii.gz", (task / "imagesTr" / "tiny_001.nii.gz").read_bytes())
    image = task / "imagesTr" / "tiny_000.nii.gz"
    image.unlink()
    image.symlink_to(outside)
    return e.prepare(task)


def replaced_image(make: Callable[[Env, Path], None]) -> Callable[[Env], List[str]]:
    """A task whose first image file is rewritten by ``make(env, path)``."""

    def build(e: Env) -> List[str]:
        task = e.task()
        make(e, task / "imagesTr" / "tiny_000.nii.gz")
        return e.prepare(task)

    return build


def absurd_header(e: Env, path: Path) -> None:
    """A NIfTI-2 header that claims 100000^3 float32 voxels, followed by a few bytes of data."""
    import nibabel as nib

    header = nib.Nifti2Image(np.zeros((8, 8, 6), np.float32), np.eye(4)).header
    header["dim"][1:4] = 100000
    padding = b"\0" * (int(header["vox_offset"]) - len(header.binaryblock))
    path.write_bytes(gzip.compress(header.binaryblock + padding + bytes(4 * 384)))


def label_value(e: Env) -> List[str]:
    task = e.task()
    label = np.zeros((8, 8, 6), np.uint8)
    label[2:4, 2:4, 2:4] = 7
    e.write_nifti(label, task / "labelsTr" / "tiny_000.nii.gz")
    return e.prepare(task)


def out_inside_task(e: Env) -> List[str]:
    task = e.task()
    return ["prepare", str(task), "--out", str(task / "prepared")]


def stale_partial(e: Env) -> List[str]:
    from medseg_mem.core.files.atomic import staging_folder

    task = e.task()
    (staging_folder(e.root / "out") / "half-written.npy").write_bytes(b"x" * 10)
    (e.root / ".other.partial-abcd1234").mkdir()  # another output's: not ours to remove
    return e.prepare(task)


def stale_partial_removed(e: Env) -> None:
    left = sorted(p.name for p in e.root.iterdir() if ".partial-" in p.name)
    assert left == [".other.partial-abcd1234"] and (e.root / "out" / "manifest.json").is_file()


# --- plan ---------------------------------------------------------------------------------------------------


def calibration(content: bytes) -> Callable[[Env], List[str]]:
    def build(e: Env) -> List[str]:
        return [*TINY_PLAN, "--calibration", str(e.file("cal.json", content))]

    return build


def calibration_folder(e: Env) -> List[str]:
    folder = e.root / "inputs" / "cal.json"
    folder.mkdir(parents=True)
    e.inputs.append(folder.parent)
    return [*TINY_PLAN, "--calibration", str(folder)]


# --- compare ------------------------------------------------------------------------------------------------


def compare(content: Optional[bytes]) -> Callable[[Env], List[str]]:
    """``compare`` on a results file with ``content`` (``None``: a folder)."""

    def build(e: Env) -> List[str]:
        if content is None:
            path = e.root / "inputs" / "results.csv"
            path.mkdir(parents=True)
            e.inputs.append(path.parent)
        else:
            path = e.file("results.csv", content)
        return ["compare", str(path), "--out", str(e.root / "report")]

    return build


# --- run ----------------------------------------------------------------------------------------------------


def thick_slabs(e: Env) -> List[str]:
    """A prepared task of 32-slice cases and ``--slab-size 64``; the run is stopped right after its start."""
    from medseg_mem.core.prepare_config import PrepareConfig
    from medseg_mem.data.prepare import prepare
    import medseg_mem.runner.run as training_run

    task = e.task(shape=(8, 8, 32))
    prepare(PrepareConfig(task_dir=task, out_dir=e.root / "prepared"), progress=False, warn=lambda line: None)
    e.inputs.append(e.root / "prepared")

    def stop(device):
        raise MedsegError("--device: the test stops the run here")

    e.monkeypatch.setattr(training_run, "resolve_device", stop)
    return ["run", "--data", str(e.root / "prepared"), "--results", str(e.root / "r.csv"), "--runs",
            str(e.root / "runs"), "--variant", "patch", "--slab-size", "64", "--quiet"]  # fmt: skip


ROWS = [
    Row("dataset.json missing", no_dataset_json, "dataset.json"),
    Row("dataset.json not JSON", invalid_dataset_json, "dataset.json"),
    Row("traversal path", listed(lambda e, t: "../../etc/passwd.nii.gz"), "leads outside the task folder"),
    Row("absolute path", listed(lambda e, t: str(t / "imagesTr" / "tiny_001.nii.gz")), "is an absolute path"),
    Row("symlink leaving the task", symlink_outside, "leads outside the task folder"),
    Row("corrupt NIfTI", replaced_image(lambda e, p: p.write_bytes(b"not a nifti" * 40)), "tiny_000.nii.gz"),
    Row("truncated NIfTI", replaced_image(lambda e, p: p.write_bytes(p.read_bytes()[:200])), "tiny_000.nii.gz"),
    Row("absurd NIfTI header", replaced_image(absurd_header), "declares 100000x100000x100000 voxels, 3.55 PiB"),
    Row("5-D image", replaced_image(lambda e, p: e.write_nifti(np.ones((8, 8, 6, 1, 2), np.float32), p)),
        "tiny_000.nii.gz: has 5 dimensions (8x8x6x1x2)"),
    Row("NaN image", replaced_image(lambda e, p: e.write_nifti(np.full((8, 8, 6), np.nan, np.float32), p)),
        "tiny_000.nii.gz: holds 384 NaN/inf"),
    Row("undeclared label value", label_value, "label value(s) 7 not declared"),
    Row("--out inside the task", out_inside_task, "--out"),
    Row("2-case task", lambda e: e.prepare(e.task(n_cases=2)), "warning: ", code=0),
    Row("1-case task", lambda e: e.prepare(e.task(n_cases=1)), "they split 1/0/0 (train/val/test)", code=0),
    Row("all-zero image", replaced_image(lambda e, p: e.write_nifti(np.zeros((8, 8, 6), np.float32), p)),
        "warning: imagesTr/tiny_000.nii.gz: every voxel is 0", code=0),
    Row("partial folder of a killed prepare", stale_partial, "note: removed 1 partial folder(s)", code=0,
        check=stale_partial_removed),
    Row("absurd training plan", lambda e: [*PLAN, "--mode", "training", "--shape", "1,100000,100000,100000",
                                           "--classes", "3", "--batch", "1000000"], "--shape with --batch 1000000"),
    Row("absurd inference plan", lambda e: [*PLAN, "--shape", "1,100000,100000,100000", "--classes", "3",
                                            "--variant", "patch"], "NO", code=0),
    Row("plan shape of three numbers", lambda e: [*PLAN, "--shape", "16,16,16", "--classes", "2"], "--shape"),
    Row("calibration not JSON", calibration(b'{"cpu": {"multiplier": 1.0,'), "is not valid JSON (Expecting"),
    Row("calibration entry misses a key", calibration(b'{"k": {"multiplier": 1.0, "key": "k"}}'),
        "entry 'k': misses key 'offset_bytes'"),
    Row("calibration entry of a wrong type", calibration(b'{"k": {"multiplier": "x", "offset_bytes": 0, "key": "k"}}'),
        "'multiplier' must be a number"),
    Row("calibration holds a list", calibration(b"[1, 2]"), "it holds a list"),
    Row("calibration is a folder", calibration_folder, "cal.json: cannot be read"),
    Row("compare on a foreign CSV", compare(b"name,score\nann,3\n"), "compare NEW.csv"),
    Row("compare on a folder", compare(None), "results.csv is a folder, not a CSV file"),
    Row("compare on an empty file", compare(b""), "results.csv is empty (no header, no rows)"),
    Row("compare on binary data", compare(b"\xff\xfe\x00garbage"), "not UTF-8"),
    Row("run with slabs thicker than the cases", thick_slabs, "the test stops the run here"),
]


# --- round two: absent classes, resampling, unreadable files, odd listings, locks, CSV ranges, options ---------


def all_background(e: Env) -> List[str]:
    task = e.task()
    for index in range(3):
        e.write_nifti(np.zeros((8, 8, 6), np.uint8), task / "labelsTr" / f"tiny_{index:03d}.nii.gz")
    return e.prepare(task)


def thin_voxels(*spacing: str) -> Callable[[Env], List[str]]:
    """A task of 0.1 x 0.1 x 10 mm voxels prepared with ``--spacing``."""

    def build(e: Env) -> List[str]:
        return e.prepare(e.task(affine=np.diag([0.1, 0.1, 10.0, 1.0])), "--spacing", ",".join(spacing))

    return build


def unreadable(relative: str) -> Callable[[Env], List[str]]:
    """A task one of whose files (``relative`` to the task folder) the user may not read (mode 000)."""

    def build(e: Env) -> List[str]:
        task = e.task()
        e.faults.append(lambda: deny_reads(e.monkeypatch, task / relative, e.cleanups))
        return e.prepare(task)

    return build


def listed_folder(e: Env) -> List[str]:
    task = e.task()
    (task / "imagesTr" / "scan.nii.gz").mkdir()
    training = json.loads((task / "dataset.json").read_text())["training"]
    training[0]["image"] = "./imagesTr/scan.nii.gz"
    e.edit_json(task, training=training)
    return e.prepare(task)


def overstated_count(e: Env) -> List[str]:
    task = e.task()
    e.edit_json(task, numTraining=100)
    return e.prepare(task)


def generated_task_too_small(e: Env) -> List[str]:
    return ["prepare", "--cases", "6", "--shape", "22,22,76", "--out", str(e.root / "out")]


def nothing_generated(e: Env) -> None:
    assert not any(e.root.iterdir()), sorted(p.name for p in e.root.iterdir())


def prepare_while_another_writes(e: Env) -> List[str]:
    from medseg_mem.core.files.output_lock import output_lock

    task = e.task()
    stack = contextlib.ExitStack()
    stack.enter_context(output_lock(e.root / "out", "--out", "prepare"))  # what a running prepare holds
    e.cleanups.append(stack.close)
    return e.prepare(task)


def out_not_written(e: Env) -> None:
    assert not (e.root / "out").exists() and not [p for p in e.root.iterdir() if ".partial-" in p.name]


def results_csv(**changes) -> bytes:
    """One valid results row (a run of ``full``), with ``changes`` to its cells."""
    row = dict.fromkeys(RESULT_COLUMNS, "")
    row.update(run_id="r1", timestamp="2026-01-01T00:00:00Z", dataset="Tiny", variant="full", class_name="left",
               class_index="1", dice="0.5", peak_memory_bytes="1000", memory_method="proc", device="cpu",
               inference_seconds_per_case="0.1", train_steps="2", train_seconds="1.0", seed="0", channels="2-4",
               loss="dice_ce", n_test_cases="1", package_version="0", source="run")  # fmt: skip
    row.update({key: str(value) for key, value in changes.items()})
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=RESULT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerow(row)
    return text.getvalue().encode()


def compare_on_a_full_disk(e: Env) -> List[str]:
    """``compare`` whose plot writer writes a few bytes of the PNG, then finds the disk full."""
    from matplotlib.figure import Figure

    def half_save(figure, fname, *args, **kwargs):
        Path(fname).write_bytes(b"\x89PNG\r\n")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    e.monkeypatch.setattr(Figure, "savefig", half_save)
    return compare(results_csv())(e)


def no_half_report(e: Env) -> None:
    left = sorted(p.name for p in (e.root / "report").iterdir())
    assert left == ["comparison.csv", "comparison.md"], left  # written whole; the plot not at all, no temporary


def run_with(*options: str) -> Callable[[Env], List[str]]:
    return lambda e: ["run", "--data", str(e.root / "nowhere"), "--runs", str(e.root / "runs"), *options]


ROWS += [
    Row("all-background labels", all_background, "warning: no case of the train split (1 case(s)) holds class(es) "
        "left, right", code=0),
    Row("resampling removes a class", thin_voxels("1", "1", "1"), "warning: labelsTr/tiny_000.nii.gz: resampling to "
        "1,1,1 mm removed every voxel of class(es) left, right", code=0),
    Row("--spacing too fine for memory", thin_voxels("0.0001", "0.0001", "0.0001"),
        "tiny_000.nii.gz: resampled to --spacing 0.0001,0.0001,0.0001 mm it would be 8000x8000x600000 voxels"),
    Row("dataset.json unreadable", unreadable("dataset.json"), "dataset.json: cannot be read (permission denied)"),
    Row("image unreadable", unreadable("imagesTr/tiny_000.nii.gz"),
        "imagesTr/tiny_000.nii.gz: cannot be read (permission denied)"),
    Row("image path is a folder", listed_folder, "'./imagesTr/scan.nii.gz': is a folder, not a NIfTI file"),
    Row("numTraining overstated", overstated_count, "numTraining says 100 but 'training' lists 3 case(s)", code=0),
    Row("generated task too small", generated_task_too_small, "--shape 22,22,76: the SyntheticRods task needs X and "
        "Y >= 27", check=nothing_generated),
    Row("prepare while another prepare writes --out", prepare_while_another_writes,
        "another prepare is writing into it right now", check=out_not_written),
    Row("compare on a Dice of 7.5", compare(results_csv(dice=7.5)),
        "line 2, column dice: '7.5' is out of range (must be in [0, 1])"),
    Row("compare on a negative peak memory", compare(results_csv(peak_memory_bytes=-1)),
        "line 2, column peak_memory_bytes: '-1' is out of range"),
    Row("compare on a full disk", compare_on_a_full_disk, "comparison.png: No space left on device",
        check=no_half_report),
    Row("run --lr inf", run_with("--lr", "inf"), "'--lr': must be a finite number", code=2),
    Row("run --lr nan", run_with("--lr", "nan"), "'--lr': must be a finite number", code=2),
    Row("run --guidance-noise nan", run_with("--guidance-noise", "nan"), "'--guidance-noise'", code=2),
    Row("run --steps beyond any machine", run_with("--steps", "99999999999999999999999"), "'--steps'", code=2),
]


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_input_fault(row, tmp_path, make_msd_task, write_nifti, edit_json, checksums, monkeypatch):
    env = Env(tmp_path, make_msd_task, write_nifti, edit_json, monkeypatch)
    args = row.build(env)
    before = {str(folder): checksums(folder) for folder in env.inputs}
    for fault in env.faults:
        fault()
    result = CliRunner().invoke(main, args)
    monkeypatch.undo()  # inputs are read back without the fault
    for cleanup in env.cleanups:
        cleanup()
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    if row.code == 0:
        assert result.exit_code == 0 and row.expect in result.output, result.output
    else:
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert result.exit_code != 0 and len(errors) == 1 and row.expect in errors[0], result.output
        assert result.stderr.rstrip().endswith(errors[0]), result.stderr  # the error is one line, and the last
    assert {str(folder): checksums(folder) for folder in env.inputs} == before
    if row.check is not None:
        row.check(env)


def test_run_warns_once_about_slabs_thicker_than_the_cases(tmp_path, make_msd_task, write_nifti, edit_json,
                                                           monkeypatch):  # fmt: skip
    env = Env(tmp_path, make_msd_task, write_nifti, edit_json, monkeypatch)
    result = CliRunner().invoke(main, thick_slabs(env))
    warnings = [line for line in result.output.splitlines() if "--slab-size 64" in line]
    assert warnings == ["warning: --slab-size 64 is thicker than 3 of 3 case(s) (last axis 32 to 32 voxels): their "
                        "slabs are zero-padded to 64 (more memory, no more context); use --slab-size 32 or less"]


def test_a_partial_folder_another_prepare_is_writing_is_kept(tmp_path):
    from medseg_mem.core.files.atomic import staging_folder
    from medseg_mem.data import staging

    busy, dead = staging_folder(tmp_path / "out"), staging_folder(tmp_path / "out")
    lock = staging.hold(busy)
    try:
        assert staging.remove_stale(tmp_path / "out") == [dead]
    finally:
        staging.release(lock)
    assert busy.is_dir() and not dead.exists()


def test_tiny_task_warning_comes_before_any_case_is_read(tmp_path, make_msd_task):
    result = CliRunner().invoke(main, ["prepare", str(make_msd_task(tmp_path, n_cases=2)), "--out",
                                       str(tmp_path / "out")])  # fmt: skip
    assert result.exit_code == 0
    assert result.stderr.index("warning: ") < result.stderr.index("prepare:")
    assert "they split 2/0/0 (train/val/test) and `medseg-mem run` needs a case in each split" in result.stderr
