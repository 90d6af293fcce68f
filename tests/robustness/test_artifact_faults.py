"""Faults around what ``export`` writes (ONNX models, MONAI bundles) and the Dice of absent classes.

Like the other robustness tests: each fault ends with one ``Error:`` line naming the file at fault (or, where the
input is legal, the right answer), no traceback, the inputs byte-identical and nothing half-written. They share
the session's tiny trained ``full`` run (``conftest.trained``), copied per test.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch
from click.testing import CliRunner

from medseg_mem.cli import main
from hang_guard import HANG_GUARD_S

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"


@pytest.fixture
def run_dir(tmp_path, trained) -> Path:
    """A private copy of the shared trained run's folder."""
    base, run_id = trained
    return Path(shutil.copytree(base / "runs" / run_id, tmp_path / "run"))


def files_of(folder: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(result) -> str:
    """The result's last line, checked to be its only ``Error:`` line, after no traceback."""
    assert "Traceback" not in result.output and result.exit_code != 0, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and result.output.strip().splitlines()[-1] == errors[0], result.output
    return errors[0]


# --- ONNX: digests beside the models, checked on load; temporaries of a killed export removed -------------------


@pytest.fixture
def onnx_run(run_dir) -> Path:
    pytest.importorskip("onnxruntime")
    result = CliRunner().invoke(main, ["export", "--format", "onnx", "--checkpoint", str(run_dir)])
    assert result.exit_code == 0, result.output
    return run_dir


def test_export_writes_a_sha256_beside_each_onnx_model(onnx_run):
    model = onnx_run / "onnx" / "full.onnx"
    listed = (onnx_run / "onnx" / "full.onnx.sha256").read_text()
    assert listed == f"{hashlib.sha256(model.read_bytes()).hexdigest()}  full.onnx\n"


def test_an_onnx_model_with_flipped_bits_is_refused(onnx_run, tiny_prepared, tmp_path):
    import onnx

    model = onnx_run / "onnx" / "full.onnx"
    raw = bytearray(model.read_bytes())
    weights = max(onnx.load(str(model)).graph.initializer, key=lambda tensor: len(tensor.raw_data)).raw_data
    start = raw.find(weights)
    for offset in range(start, start + len(weights), 4):  # an exponent bit of every float32: still a valid model
        raw[offset + 3] ^= 0x40
    model.write_bytes(bytes(raw))
    before = files_of(onnx_run)
    scan = tiny_prepared.root.parent / "Task99_Tiny" / "imagesTr" / "tiny_000.nii.gz"
    result = CliRunner().invoke(main, ["predict", "--quiet", "--engine", "onnxruntime", "--checkpoint", str(onnx_run),
                                       str(scan), "--out", str(tmp_path / "pred")])  # fmt: skip
    line = one_error_line(result)
    assert f"ONNX model {model}: SHA-256 mismatch" in line and "medseg-mem export --format onnx" in line
    assert files_of(onnx_run) == before and not list((tmp_path / "pred").glob("*.nii.gz"))


def test_export_removes_the_temporaries_a_killed_export_left(onnx_run):
    folder = onnx_run / "onnx"
    stale = [folder / ".full.onnx.k1ll3d_x.onnx", folder / ".recipe.json.abcd1234.tmp"]
    for path in stale:
        path.write_bytes(b"")
    kept = folder / ".notes.txt"  # not an export's: left alone
    kept.write_text("mine\n")
    result = CliRunner().invoke(main, ["export", "--format", "onnx", "--checkpoint", str(onnx_run)])
    assert result.exit_code == 0, result.output
    assert "removed 2 temporary file(s) an interrupted export left" in result.output
    assert not any(path.exists() for path in stale) and kept.exists()
    assert sorted(p.name for p in folder.iterdir()) == [".notes.txt", "full.onnx", "full.onnx.sha256", "recipe.json"]


# --- bundles: configs checked before anything is written, digests beside the weights, the bundle run named ------


@pytest.fixture
def bundle(tmp_path) -> Path:
    """A copy of ``bundles/full`` without trained weights."""
    return Path(shutil.copytree(BUNDLES / "full", tmp_path / "bundle", ignore=shutil.ignore_patterns("models")))


@pytest.mark.parametrize("config, content, words", [
    ("inference.json", '{"variant": "full",', "configs/inference.json is not valid JSON"),
    ("inference.json", '["full"]', "configs/inference.json must hold a JSON object; it holds a list"),
    ("metadata.json", '{"version": ', "configs/metadata.json is not valid JSON"),
])  # fmt: skip
def test_export_into_a_bundle_with_a_broken_config_writes_nothing(run_dir, bundle, config, content, words):
    (bundle / "configs" / config).write_text(content)
    before = files_of(bundle)
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(run_dir), "--bundle", str(bundle)])
    line = one_error_line(result)
    assert f"--bundle {bundle}: {words}" in line and "restore it from medseg-mem's bundles/full" in line
    assert files_of(bundle) == before and not (bundle / "models").exists()


def test_export_writes_a_sha256_beside_the_bundle_weights(run_dir, bundle):
    from medseg_mem.core.errors import MedsegError
    from medseg_mem.core.files.digest import verify_digest

    result = CliRunner().invoke(main, ["export", "--checkpoint", str(run_dir), "--bundle", str(bundle)])
    assert result.exit_code == 0, result.output
    model = bundle / "models" / "model.pt"
    assert (bundle / "models" / "model.pt.sha256").read_text() == \
        f"{hashlib.sha256(model.read_bytes()).hexdigest()}  model.pt\n"  # fmt: skip
    model.write_bytes(model.read_bytes()[:1000])  # truncated, as a broken copy
    with pytest.raises(MedsegError, match="SHA-256 mismatch"):
        verify_digest(model, "bundle weights")  # what sha256sum -c models/model.pt.sha256 says too


@pytest.mark.slow  # python -m monai.bundle in a fresh interpreter
def test_bundle_inference_without_a_model_names_the_bundle_run(bundle, tmp_path):
    pytest.importorskip("fire")  # no models/ exported into the bundle: it needs a trained run in model_dir
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
               "--model_dir", str(tmp_path / "no-model")]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert done.returncode == 1 and "Traceback" not in done.stderr + done.stdout
    (line,) = [text for text in done.stderr.splitlines() if "medseg-mem:" in text]
    assert f"--config_file {bundle}/configs/train.json" in line and "bundles/full" not in line


# --- Dice of a class absent from a case: NaN, left out of every mean ------------------------------------------


class Echo:
    """A trained variant whose segmentation is a given label map (the ground truth, or an edited copy of it)."""

    num_classes = 3

    def __init__(self, predictions: List[torch.Tensor]) -> None:
        self.predictions = predictions
        self.calls = 0

    def eval(self) -> "Echo":
        return self

    def segment(self, image):
        prediction = self.predictions[min(self.calls, len(self.predictions) - 1)]
        self.calls += 1
        return prediction


def label(*classes: int) -> torch.Tensor:
    """A 1x1x2x2x2 label map holding each of ``classes`` in one voxel (background elsewhere)."""
    volume = torch.zeros(1, 1, 2, 2, 2, dtype=torch.uint8)
    for index, value in enumerate(classes):
        volume.view(-1)[index] = value
    return volume


def test_a_class_absent_from_a_case_is_not_scored_there():
    from medseg_mem.runner.evaluation import evaluate_variant

    truths = [label(1, 2), label(1)]  # class 2 only in the first case
    predictions = [truths[0], truths[0], label(1)]  # (warm-up call first) both cases right
    cases = [(torch.zeros(1, 1, 2, 2, 2), truth) for truth in truths]
    evaluation = evaluate_variant(Echo(predictions), cases, torch.device("cpu"))
    assert evaluation.dice == [1.0, 1.0] and evaluation.dice_cases == [2, 1]  # not (1 + 1) / 2 from an empty case
    wrong = [truths[0], truths[0], label(1, 2)]  # class 2 predicted where the second case has none: 0 there
    evaluation = evaluate_variant(Echo(wrong), cases, torch.device("cpu"))
    assert evaluation.dice == [1.0, 0.5] and evaluation.dice_cases == [2, 2]


def test_a_class_no_test_case_holds_files_an_empty_dice_and_reads_back(tmp_path):
    from medseg_mem.core.config import ModelConfig, TrainConfig
    from medseg_mem.memory.measure import MemoryReading
    from medseg_mem.report import compare
    from medseg_mem.report.results import append_rows, read_results
    from medseg_mem.runner.evaluation import Evaluation
    from medseg_mem.runner.evaluation import VariantResult, result_rows

    class Dataset:
        name, class_names = "Tiny", ("background", "left", "right")
        modalities, manifest, split = ("MRI",), {"preprocessing": {}}, {"train": ["a"], "val": ["b"], "test": ["c"]}

    evaluation = Evaluation(dice=[0.8, math.nan], seconds_per_case=0.1, n_cases=2, dice_cases=[2, 0])
    result = VariantResult("r1", "full", evaluation, MemoryReading(1000, "proc", "cpu"), 2, 1.0)
    rows = result_rows(result, Dataset(), ModelConfig(channels=(2, 4)), TrainConfig(), "cpu")
    append_rows(tmp_path / "results.csv", rows)
    frame = read_results(tmp_path / "results.csv")
    assert frame["dice_cases"].tolist() == [2, 0] and frame["dice"].iloc[0] == 0.8 and math.isnan(frame["dice"].iloc[1])
    report = compare(tmp_path / "results.csv")
    row = next(line for line in report.text.splitlines() if line.startswith("| full"))
    assert "80.00" in row and "—" in row and "100.00" not in row  # the mean is the scored class's, 80 %


def test_validation_with_no_class_to_score_still_keeps_a_checkpoint():
    from medseg_mem.training.loop import improves

    state = {"best_score": -1.0, "best_step": 0}
    assert improves(math.nan, state)  # the first validation always counts
    state.update(best_score=math.nan, best_step=1)
    assert improves(0.2, state) and not improves(math.nan, state)
    state.update(best_score=0.5, best_step=2)
    assert not improves(math.nan, state) and not improves(0.4, state) and improves(0.6, state)


def test_old_results_without_dice_cases_stay_readable(tmp_path):
    from medseg_mem.report.results import OPTIONAL_COLUMNS, RESULT_COLUMNS, read_results

    header = [c for c in RESULT_COLUMNS if c not in OPTIONAL_COLUMNS]
    values = {"run_id": "r1", "variant": "full", "class_index": "1", "dice": "1.0", "source": "run"}
    (tmp_path / "old.csv").write_text(",".join(header) + "\n" + ",".join(values.get(c, "") for c in header) + "\n")
    frame = read_results(tmp_path / "old.csv")
    assert frame["dice"].tolist() == [1.0] and frame["dice_cases"].isna().all()
