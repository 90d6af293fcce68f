"""Faults around ``run``, ``--resume``, the results CSV, checkpoints and ``predict --out``, through the CLI.

Every case runs ``medseg-mem`` in-process and must end with a non-zero exit, a last output line that names the
file or option at fault, no traceback, and its input files byte-identical afterwards. Read-only folders are
made with ``chmod`` where that binds; as root (where it does not) writes into them are refused by patching
``os.open`` / ``os.mkdir`` / ``os.replace``, so the code under test sees the same ``PermissionError``. A full
disk is a writer that writes half its bytes, then raises ``ENOSPC``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import pytest
from click.testing import CliRunner

from medseg_mem.cli import main
from medseg_mem.report.results import RESULT_COLUMNS

from disk_faults import deny_reads, install_full_disk

TINY = ["--steps", "2", "--val-every", "1", "--channels", "2,4", "--quiet"]


# --- fault makers --------------------------------------------------------------------------------------------


def deny_writes(e: Env, folder: Path) -> Path:
    """Make ``folder`` (created if missing) refuse new files, folders and renames into it."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        e.cleanups.append(lambda: folder.chmod(0o755))
        return folder
    monkeypatch = e.monkeypatch
    root = folder.resolve()
    real_open, real_mkdir, real_replace = os.open, os.mkdir, os.replace

    def inside(path) -> bool:
        return Path(os.path.abspath(path)).resolve().is_relative_to(root)

    def refuse(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    def fake_open(path, flags, *args, **kwargs):
        writing = flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
        return refuse(path) if writing and inside(path) else real_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        return refuse(path) if inside(path) else real_mkdir(path, *args, **kwargs)

    def fake_replace(source, target, **kwargs):
        return refuse(target) if inside(target) else real_replace(source, target, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)
    monkeypatch.setattr(os, "replace", fake_replace)
    return folder


def full_disk_for(monkeypatch, target: Path) -> None:
    """The atomic text writer fails halfway through writing ``target`` (disk full)."""
    install_full_disk(monkeypatch, lambda path: path.name.startswith(f".{target.name}."))


def full_disk_for_checkpoints(monkeypatch) -> None:
    """``torch.save`` writes half of the checkpoint, then fails with ``ENOSPC``."""
    import torch

    real_save = torch.save

    def half_save(obj, path, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        Path(path).write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", half_save)


def entry_offset(path: Path, predicate: Callable[[zipfile.ZipInfo], bool]) -> int:
    """Byte offset in ``path`` where the data of the first zip entry matching ``predicate`` starts."""
    raw = path.read_bytes()
    info = next(i for i in zipfile.ZipFile(path).infolist() if predicate(i))
    name_length, extra_length = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    return info.header_offset + 30 + name_length + extra_length


def overwrite_weights(path: Path, count: int = 64) -> None:
    """Overwrite ``count`` bytes inside the largest weight tensor of a checkpoint (its pickle stays valid)."""
    infos = [i for i in zipfile.ZipFile(path).infolist() if "/data/" in i.filename and i.file_size >= count]
    largest = max(infos, key=lambda i: i.file_size)
    start = entry_offset(path, lambda i: i.filename == largest.filename)
    raw = bytearray(path.read_bytes())
    raw[start : start + count] = bytes(b ^ 0x5A for b in raw[start : start + count])
    path.write_bytes(bytes(raw))


def flip_pickle_byte(path: Path) -> None:
    """Flip one byte inside the string ``class_names`` of the checkpoint's pickle."""
    start = entry_offset(path, lambda i: i.filename.endswith("data.pkl"))
    raw = bytearray(path.read_bytes())
    raw[raw.index(b"class_names", start)] ^= 0xFF
    path.write_bytes(bytes(raw))


def write_code_checkpoint(path: Path) -> None:
    import torch

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"format": "medseg-mem-checkpoint/1", "payload": Evil()}, path)


# --- the environment every case starts from ------------------------------------------------------------------


@dataclass
class Env:
    """Paths a case works with: a private copy of the trained run, a fresh results path, a scan to predict."""

    tmp: Path
    data: Path
    runs: Path
    run_id: str
    results: Path
    scan: Path
    monkeypatch: pytest.MonkeyPatch
    inputs: List[Path] = field(default_factory=list)
    faults: List[Callable[[], None]] = field(default_factory=list)  # installed after the inputs' snapshot
    cleanups: List[Callable[[], None]] = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        return self.runs / self.run_id

    def best(self) -> Path:
        return self.run_dir / "full" / "best.pt"

    def last(self) -> Path:
        return self.run_dir / "full" / "last.pt"

    def run(self, *args: str) -> List[str]:
        return ["run", "--data", str(self.data), "--results", str(self.results), "--runs", str(self.runs), *args]

    def resume(self, *args: str) -> List[str]:
        return ["run", "--resume", self.run_id, "--runs", str(self.runs), "--results", str(self.results), *args]

    def predict(self, *args: str, out: Path = None) -> List[str]:
        out = out or self.tmp / "pred"
        return ["predict", "--quiet", "--checkpoint", str(self.run_dir), str(self.scan), "--out", str(out), *args]


@pytest.fixture
def env(tmp_path, trained, tiny_prepared, monkeypatch):
    base, run_id = trained
    runs = tmp_path / "runs"
    shutil.copytree(base / "runs", runs)
    results = tmp_path / "results.csv"
    record_path = runs / run_id / "run.json"
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "results": str(results)}, indent=2) + "\n")
    scan = tiny_prepared.root.parent / "Task99_Tiny" / "imagesTr" / "tiny_000.nii.gz"
    made = Env(tmp_path, tiny_prepared.root, runs, run_id, results, scan, monkeypatch)
    yield made
    for cleanup in made.cleanups:
        cleanup()


# --- the cases: (id, set-up returning the CLI args, words the last line must hold, exit code) ------------------


def read_only_runs(e: Env):
    deny_writes(e, e.tmp / "locked")
    e.runs = e.tmp / "locked" / "runs"
    return e.run("--variant", "full", *TINY)


def read_only_runs_folder_itself(e: Env):
    e.runs = deny_writes(e, e.tmp / "runs-ro")
    return e.run(*TINY)


def runs_is_a_file(e: Env):
    (e.tmp / "runs-file").write_text("not a folder\n")
    e.inputs.append(e.tmp / "runs-file")
    e.runs = e.tmp / "runs-file"
    return e.run(*TINY)


def read_only_results_folder(e: Env):
    deny_writes(e, e.tmp / "locked")
    e.results = e.tmp / "locked" / "results.csv"
    return e.run("--variant", "full", *TINY)


def results_is_a_folder(e: Env):
    e.results.mkdir()
    return e.run("--variant", "full", *TINY)


def results_under_a_file(e: Env):
    (e.tmp / "plain").write_text("a file\n")
    e.inputs.append(e.tmp / "plain")
    e.results = e.tmp / "plain" / "results.csv"
    return e.run("--variant", "full", *TINY)


def malformed_results(e: Env):
    e.results.write_text("this is not, a results file\n1,2\n")
    e.inputs.append(e.results)
    return e.run("--variant", "full", *TINY)


def results_write_fails_after_training(e: Env):
    e.results.write_text(",".join(RESULT_COLUMNS) + "\n")
    e.inputs.append(e.results)
    full_disk_for(e.monkeypatch, e.results)
    return e.run("--variant", "full", *TINY)


def checkpoint_write_fails_in_training(e: Env):
    full_disk_for_checkpoints(e.monkeypatch)
    return e.run("--variant", "full", *TINY)


def missing_dataset(e: Env):
    e.data = e.tmp / "nowhere"
    return e.run("--variant", "full", *TINY)


def unknown_run_id(e: Env):
    e.run_id = "20990101T000000Z-full-000000"
    return e.resume("--quiet")


def run_id_is_a_path(e: Env):
    e.run_id = "../escape"
    return e.resume("--quiet")


def damaged_run_record(e: Env):
    (e.run_dir / "run.json").write_text("{not json")
    e.inputs.append(e.run_dir)
    return e.resume("--quiet")


def resume_on_other_data(e: Env):
    other = e.tmp / "other"
    other.mkdir()
    e.inputs.append(e.run_dir)
    return e.resume("--quiet", "--data", str(other))


def resume_with_training_options(e: Env):
    e.inputs.append(e.run_dir)
    return e.resume("--steps", "5")


def resume_without_its_dataset(e: Env):
    record = json.loads((e.run_dir / "run.json").read_text())
    (e.run_dir / "run.json").write_text(json.dumps({**record, "data_dir": str(e.tmp / "gone")}, indent=2) + "\n")
    e.inputs.append(e.run_dir)
    return e.resume("--quiet")


def resume_with_tampered_last(e: Env):
    overwrite_weights(e.last())
    e.inputs.append(e.run_dir)
    return e.resume("--quiet")


def resume_with_damaged_digest(e: Env):
    (e.run_dir / "full" / "last.pt.sha256").write_text("garbage\n")
    e.inputs.append(e.run_dir)
    return e.resume("--quiet")


def resume_with_flipped_pickle_byte(e: Env):
    (e.run_dir / "full" / "last.pt.sha256").unlink()  # an older run without digests
    flip_pickle_byte(e.last())
    e.inputs.append(e.run_dir)
    return e.resume("--quiet")


def resume_into_read_only_run_folder(e: Env):
    e.inputs.append(e.run_dir)
    deny_writes(e, e.run_dir)
    return e.resume("--quiet")


def predict_into_read_only_out(e: Env):
    e.inputs.append(e.run_dir)
    deny_writes(e, e.tmp / "locked")
    return e.predict(out=e.tmp / "locked" / "pred")


def predict_out_under_a_file(e: Env):
    (e.tmp / "plain").write_text("a file\n")
    e.inputs += [e.run_dir, e.tmp / "plain"]
    return e.predict(out=e.tmp / "plain" / "pred")


def predict_out_is_a_file(e: Env):
    (e.tmp / "pred").write_text("a file\n")
    e.inputs += [e.run_dir, e.tmp / "pred"]
    return e.predict()


def predict_tampered_best(e: Env):
    overwrite_weights(e.best())
    e.inputs.append(e.run_dir)
    return e.predict()


def predict_truncated_best(e: Env):
    e.best().write_bytes(e.best().read_bytes()[:1000])
    e.inputs.append(e.run_dir)
    return e.predict()


def predict_damaged_digest(e: Env):
    (e.run_dir / "full" / "best.pt.sha256").write_text("")
    e.inputs.append(e.run_dir)
    return e.predict()


def predict_flipped_pickle_byte(e: Env):
    (e.run_dir / "full" / "best.pt.sha256").unlink()
    flip_pickle_byte(e.best())
    e.inputs.append(e.run_dir)
    return e.predict()


def predict_checkpoint_with_code(e: Env):
    write_code_checkpoint(e.tmp / "evil.pt")
    e.inputs += [e.run_dir, e.tmp / "evil.pt"]
    return ["predict", "--quiet", "--checkpoint", str(e.tmp / "evil.pt"), str(e.scan), "--out", str(e.tmp / "p")]


def predict_text_file_as_checkpoint(e: Env):
    (e.tmp / "notes.pt").write_text("some notes\n")
    e.inputs.append(e.tmp / "notes.pt")
    return ["predict", "--quiet", "--checkpoint", str(e.tmp / "notes.pt"), str(e.scan), "--out", str(e.tmp / "p")]


def predict_run_without_best(e: Env):
    e.best().unlink()
    e.inputs.append(e.run_dir)
    return e.predict()


def predict_label_map_write_fails(e: Env):
    e.inputs.append(e.run_dir)
    import nibabel

    def half_save(image, path, *args, **kwargs):
        Path(path).write_bytes(b"\x1f\x8b" + b"\x00" * 10)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    e.monkeypatch.setattr(nibabel, "save", half_save)
    return e.predict()


def edited_record(change: Callable[[dict], None]) -> Callable[[Env], List[str]]:
    """``--resume`` of the run after ``change`` edited its ``run.json`` (a dict)."""

    def build(e: Env) -> List[str]:
        path = e.run_dir / "run.json"
        record = json.loads(path.read_text())
        change(record)
        path.write_text(json.dumps(record, indent=2) + "\n")
        e.inputs.append(e.run_dir)
        return e.resume("--quiet")

    return build


def predict_unreadable_best(e: Env):
    e.inputs.append(e.run_dir)
    e.faults.append(lambda: deny_reads(e.monkeypatch, e.best(), e.cleanups))
    return e.predict()


def predict_code_with_its_digest(e: Env):
    """``best.pt`` holds a call of ``os.system``, and its ``.sha256`` matches it (written by whoever planted it)."""
    import torch

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"format": "medseg-mem-checkpoint/1", "payload": Payload()}, e.best())
    digest = hashlib.sha256(e.best().read_bytes()).hexdigest()
    (e.run_dir / "full" / "best.pt.sha256").write_text(f"{digest}  best.pt\n")
    e.inputs.append(e.run_dir)
    return e.predict()


def predict_while_another_writes(e: Env):
    from medseg_mem.core.files.output_lock import output_lock

    out = e.tmp / "pred"
    out.mkdir()
    stack = contextlib.ExitStack()
    stack.enter_context(output_lock(out, "--out", "predict", inside=True))  # what a running predict holds
    e.cleanups.append(stack.close)
    e.inputs.append(e.run_dir)
    return e.predict(out=out)


def interrupted_run(e: Env):
    import medseg_mem.runner.run as training_run

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    e.monkeypatch.setattr(training_run, "train_variant", interrupt)
    return e.run("--variant", "full", *TINY)


def diverging_run(e: Env):
    """A fresh run whose second step's loss is NaN."""
    import torch

    import medseg_mem.training.loop as loop

    real, calls = loop.train_step, []

    def step(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return torch.tensor(float("nan")) if len(calls) == 2 else loss

    e.monkeypatch.setattr(loop, "train_step", step)
    e.runs = e.tmp / "fresh-runs"
    return e.run("--variant", "full", "--steps", "3", "--val-every", "1", "--channels", "2,4", "--quiet")


def weights_turn_nan(e: Env):
    """A fresh run whose first step leaves a NaN weight behind a finite loss (what a huge --lr does)."""
    import torch

    import medseg_mem.training.loop as loop

    real = loop.train_step

    def step(net, *args, **kwargs):
        loss = real(net, *args, **kwargs)
        with torch.no_grad():
            next(net.parameters()).view(-1)[0] = float("nan")
        return loss

    e.monkeypatch.setattr(loop, "train_step", step)
    e.runs = e.tmp / "fresh-runs"
    return e.run("--variant", "full", "--steps", "3", "--val-every", "1", "--channels", "2,4", "--quiet")


def nothing_saved(e: Env) -> None:
    assert not list(e.runs.rglob("*.pt"))


def only_finite_weights_saved(e: Env) -> None:
    import torch

    saved = sorted(e.runs.rglob("*.pt"))
    assert [p.name for p in saved] == ["best.pt", "last.pt"]
    for path in saved:
        payload = torch.load(path, weights_only=True)
        assert payload["step"] == 1 and all(bool(torch.isfinite(t).all()) for t in payload["state_dict"].values())


@dataclass(frozen=True)
class Case:
    build: Callable[[Env], Sequence[str]]
    words: Callable[[Env], Sequence[str]]
    exit_code: int = 1
    absent: Sequence[str] = ()  # words the last line must not hold
    check: Callable[[Env], None] = None


CASES: Dict[str, Case] = {
    "read-only --runs parent": Case(read_only_runs, lambda e: ["--runs", "locked", "Permission denied"]),
    "read-only --runs folder": Case(read_only_runs_folder_itself, lambda e: ["--runs", "runs-ro", "cannot write"]),
    "--runs is a file": Case(runs_is_a_file, lambda e: ["--runs", "runs-file", "is a file"]),
    "read-only --results folder": Case(read_only_results_folder, lambda e: ["--results", "results.csv", "locked"]),
    "--results is a folder": Case(results_is_a_folder, lambda e: ["--results", "results.csv", "is a folder"]),
    "--results under a file": Case(results_under_a_file, lambda e: ["--results", "plain"]),
    "malformed --results CSV": Case(malformed_results, lambda e: ["results.csv", "not a results CSV"]),
    "results write fails after training": Case(
        results_write_fails_after_training,
        lambda e: ["results.csv", "No space left", "unchanged", "finished training", "--resume 20"],
    ),
    "checkpoint write fails in training": Case(
        checkpoint_write_fails_in_training, lambda e: ["best.pt", "No space left", "last checkpoint", "--resume 20"]
    ),
    "missing --data": Case(missing_dataset, lambda e: ["nowhere", "medseg-mem prepare"]),
    "--resume unknown run": Case(unknown_run_id, lambda e: ["--resume", "no run at", e.run_id]),
    "--resume a path": Case(run_id_is_a_path, lambda e: ["--resume", "run id"], exit_code=2),
    "--resume damaged run.json": Case(damaged_run_record, lambda e: ["run.json", "not a readable run record"]),
    "--resume on other --data": Case(resume_on_other_data, lambda e: ["--data", "other", "drop --data"], 2),
    "--resume with --steps": Case(resume_with_training_options, lambda e: ["--resume", "saved settings"], 2),
    "--resume without its dataset": Case(resume_without_its_dataset, lambda e: ["--resume", "gone", "run.json"]),
    "--resume tampered last.pt": Case(resume_with_tampered_last, lambda e: ["last.pt", "SHA-256 mismatch"]),
    "--resume damaged digest": Case(resume_with_damaged_digest, lambda e: ["last.pt", "last.pt.sha256", "damaged"]),
    "--resume flipped pickle byte": Case(
        resume_with_flipped_pickle_byte, lambda e: ["last.pt", "damaged or not a medseg-mem checkpoint"]
    ),
    "--resume read-only run folder": Case(resume_into_read_only_run_folder, lambda e: ["--runs", e.run_id]),
    "predict read-only --out": Case(predict_into_read_only_out, lambda e: ["--out", "locked", "cannot write"]),
    "predict --out under a file": Case(predict_out_under_a_file, lambda e: ["--out", "plain is a file"]),
    "predict --out is a file": Case(predict_out_is_a_file, lambda e: ["--out", "pred"], exit_code=2),
    "predict tampered best.pt": Case(predict_tampered_best, lambda e: ["best.pt", "SHA-256 mismatch"]),
    "predict truncated best.pt": Case(predict_truncated_best, lambda e: ["best.pt", "SHA-256 mismatch"]),
    "predict damaged digest": Case(predict_damaged_digest, lambda e: ["best.pt.sha256", "damaged"]),
    "predict flipped pickle byte": Case(
        predict_flipped_pickle_byte, lambda e: ["best.pt", "damaged or not a medseg-mem checkpoint"]
    ),
    "predict checkpoint with code": Case(predict_checkpoint_with_code, lambda e: ["evil.pt", "cannot be read safely"]),
    "predict text file as checkpoint": Case(
        predict_text_file_as_checkpoint, lambda e: ["notes.pt", "damaged or not a medseg-mem checkpoint", "zip"]
    ),
    "predict run without best.pt": Case(predict_run_without_best, lambda e: ["full/best.pt", "--resume"]),
    "predict label map write fails": Case(predict_label_map_write_fails, lambda e: ["tiny_000.nii.gz", "failed"]),
    "--resume run.json with slab_size -16": Case(
        edited_record(lambda r: r["model"].update(slab_size=-16)),
        lambda e: ["run.json: model.slab_size must be a positive number of voxels; got -16", "restore"],
        absent=["--slab-size"],
    ),
    "--resume run.json with other channels": Case(
        edited_record(lambda r: r["model"].update(channels=[4, 8, 999])),
        lambda e: ["run.json: model.channels is [4, 8, 999]", "trained with [2, 4]", "restore model.channels"],
    ),
    "--resume run.json with steps beyond any machine": Case(
        edited_record(lambda r: r["train"].update(steps=10**23)),
        lambda e: ["run.json: train.steps must be at most 1,000,000,000"], absent=["--steps"],
    ),
    "predict unreadable best.pt": Case(
        predict_unreadable_best, lambda e: ["best.pt: cannot be read (permission denied)", "chmod"]
    ),
    "predict best.pt with code and its digest": Case(
        predict_code_with_its_digest,
        lambda e: ["best.pt: cannot be read safely: it holds code, not only tensors (GLOBAL posix.system)"],
        absent=["PyTorch 2.6"],
    ),
    "predict while another predict writes --out": Case(
        predict_while_another_writes, lambda e: ["--out", "another predict is writing into it right now"]
    ),
    "run interrupted (Ctrl-C)": Case(interrupted_run, lambda e: ["interrupted (Ctrl-C): run 20", "--resume 20"]),
    "training diverges": Case(
        diverging_run,
        lambda e: ["[full/full] training diverged at step 2: the loss is nan", "last.pt (step 1) is the last finite "
                   "checkpoint, kept", "lower --lr"],
        absent=["--resume"], check=only_finite_weights_saved,
    ),
    "training leaves NaN weights": Case(
        weights_turn_nan,
        lambda e: ["[full/full] training diverged at step 1: 1 of ", "weight tensors are NaN or infinite (loss ",
                   "no checkpoint was saved before it"],
        check=nothing_saved,
    ),
}


def snapshot(paths: Sequence[Path]) -> Dict[str, bytes]:
    """Every file under ``paths`` (files or folders) and its bytes."""
    files = [q for p in paths for q in ([p] if p.is_file() else sorted(p.rglob("*"))) if q.is_file()]
    return {str(q): q.read_bytes() for q in files}


@pytest.mark.parametrize("name", list(CASES))
def test_fault_gives_one_line_naming_the_culprit_and_leaves_inputs_intact(name, env):
    case = CASES[name]
    args = case.build(env)
    inputs = [env.data, env.scan, *env.inputs]
    before = snapshot(inputs)
    for fault in env.faults:
        fault()
    result = CliRunner().invoke(main, [str(arg) for arg in args])
    env.monkeypatch.undo()  # files are read back without the fault
    while env.cleanups:
        env.cleanups.pop()()
    last = result.output.strip().splitlines()[-1] if result.output.strip() else ""
    assert result.exit_code == case.exit_code, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, (AssertionError, TypeError))
    assert last.startswith("Error:"), result.output
    for word in case.words(env):
        assert word in last, f"{word!r} not in the last line: {last}"
    for word in case.absent:
        assert word not in last, f"{word!r} in the last line: {last}"
    assert snapshot(inputs) == before
    if case.check is not None:
        case.check(env)


# --- nothing lost: after a failed write, --resume files the rows once, without training again -----------------


def file_hashes(folder: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.pt"))}


def test_after_a_failed_results_write_resume_files_the_rows_once_without_training(env, tmp_path, monkeypatch):
    import pandas as pd

    full_disk_for(monkeypatch, env.results)
    failed = CliRunner().invoke(main, env.run("--variant", "full", *TINY))
    monkeypatch.undo()
    assert failed.exit_code == 1 and not env.results.exists()
    run_id = failed.output.split("--resume ")[-1].split()[0]
    trained = file_hashes(env.runs / run_id)
    monkeypatch.chdir(tmp_path)  # no ./medseg-work here: the run's saved dataset and results CSV are used
    resumed = CliRunner().invoke(main, ["run", "--resume", run_id, "--runs", str(env.runs), "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    assert file_hashes(env.runs / run_id) == trained  # evaluated, not trained again
    rows = pd.read_csv(env.results)
    assert (rows.run_id == run_id).sum() == 2 and (rows.train_steps == 2).all()
    again = CliRunner().invoke(main, ["run", "--resume", run_id, "--runs", str(env.runs), "--quiet"])
    assert again.exit_code == 0 and f"run {run_id} is finished" in again.output and str(env.results) in again.output
    assert pd.read_csv(env.results).equals(rows)


def test_resume_on_the_same_data_given_again_is_accepted(env):
    before = file_hashes(env.run_dir)
    result = CliRunner().invoke(main, env.resume("--quiet", "--data", str(env.data)))
    assert result.exit_code == 0, result.output
    assert file_hashes(env.run_dir) == before and len(env.results.read_text().splitlines()) == 1 + 2


def test_predict_into_its_own_input_folder_again_leaves_its_label_maps_out(env):
    folder = env.tmp / "scans"
    folder.mkdir()
    shutil.copy(env.scan, folder / "a.nii.gz")
    args = ["predict", "--quiet", "--checkpoint", str(env.run_dir), str(folder), "--out", str(folder), "--overwrite"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0 and "predicted 1 of 1" in first.output, first.output
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "predicted 1 of 1" in again.output, again.output
    note = "note: left out 1 label map(s) an earlier predict wrote into the input folder(s) (a_seg.nii.gz)"
    assert note in again.output
    assert sorted(p.name for p in folder.iterdir()) == ["a.nii.gz", "a_seg.nii.gz"]
