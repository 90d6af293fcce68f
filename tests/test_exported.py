"""Exported runs stand on their own: a bundle runs from its own ``models/`` in an empty folder, and ``predict
--checkpoint`` takes a run folder, an exported bundle or an ONNX folder (their digests checked)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hang_guard import HANG_GUARD_S

from medseg_mem.core.errors import MedsegError
from medseg_mem.predict import predict

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
HAS_ORT = all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_prepared, trained_runs):
    """The session's tiny ``full`` run, its bundle export, the test scans and predict's label maps."""
    from medseg_mem.export.bundle import export_bundle

    base = tmp_path_factory.mktemp("exported")
    run_dir = trained_runs("full")
    bundle = shutil.copytree(BUNDLES / "full", base / "bundle", ignore=shutil.ignore_patterns("models"))
    export_bundle(run_dir, bundle)
    manifest = tiny_prepared.manifest
    scans = base / "scans"
    scans.mkdir()
    for case in manifest["cases"]:
        if case["id"] in tiny_prepared.ids("test"):
            shutil.copy(Path(manifest["source"]) / case["image"], scans)
    predict(run_dir, [scans], base / "expected", device="cpu", progress=False)
    return run_dir, bundle, scans, base / "expected"


def label_maps(folder: Path) -> dict:
    return {path.name: np.asarray(nib.load(path).dataobj) for path in sorted(folder.glob("*_seg.nii.gz"))}


def assert_same_labels(got: Path, expected: Path) -> None:
    want = label_maps(expected)
    have = label_maps(got)
    assert sorted(have) == sorted(want) and want
    for name in want:
        assert np.array_equal(have[name], want[name]), name


@pytest.mark.slow
def test_an_exported_bundle_runs_from_a_copy_in_an_empty_folder(exported, tmp_path):
    pytest.importorskip("fire")
    _, bundle, scans, expected = exported
    copy = shutil.copytree(bundle, tmp_path / "elsewhere" / "my_bundle")
    cwd = tmp_path / "empty"
    cwd.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "MEDSEG_MEM_HOME"}
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(copy / "configs" / "inference.json"),
               "--bundle_root", str(copy), "--input_dir", str(scans), "--output_dir", str(tmp_path / "out"),
               "--device", "cpu", "--progress", "false"]  # fmt: skip
    done = subprocess.run(command, cwd=cwd, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=HANG_GUARD_S)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_labels(tmp_path / "out", expected)
    assert list(cwd.iterdir()) == []  # no medseg-work folder, nothing written where it ran


def test_predict_takes_an_exported_bundle(exported, tmp_path):
    _, bundle, scans, expected = exported
    summary = predict(bundle, [scans], tmp_path / "out", device="cpu", progress=False)
    assert summary.ok and summary.variant == "full"
    assert_same_labels(tmp_path / "out", expected)


def test_a_bundle_whose_weights_were_changed_is_refused(exported, tmp_path):
    _, bundle, scans, _ = exported
    copy = shutil.copytree(bundle, tmp_path / "bundle")
    (copy / "models" / "model.pt").write_bytes((copy / "models" / "model.pt").read_bytes() + b"\0")
    with pytest.raises(MedsegError, match="model.pt"):
        predict(copy, [scans], tmp_path / "out", device="cpu", progress=False)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.skipif(not HAS_ORT, reason="onnx/onnxruntime not installed: pip install '.[onnx]'")
def test_predict_takes_an_onnx_folder(exported, tmp_path):
    from medseg_mem.export.onnx import export_onnx

    run_dir, _, scans, expected = exported
    onnx_dir = tmp_path / "onnx"
    export_onnx(run_dir, onnx_dir)
    assert json.loads((onnx_dir / "recipe.json").read_text())["dataset_fingerprint"]
    notes = []
    summary = predict(onnx_dir, [scans], tmp_path / "out", device="cpu", progress=False, warn=notes.append)
    assert summary.ok and "onnxruntime" in summary.device
    assert any("ONNX export" in note for note in notes)
    assert_same_labels(tmp_path / "out", expected)
