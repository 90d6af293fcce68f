"""The MONAI bundles in ``bundles/``: metadata, configs, and train.json then inference.json run in-process.

Each bundle is run through ``monai.bundle.run`` (what ``python -m monai.bundle run`` calls) with tiny settings in
a temporary work folder. Peak-memory measurement (a spawned process, tested in test_measure.py) is stubbed to
keep the suite fast, and torch runs on one thread.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import pytest
import torch

from medseg_mem.bundle import as_bool, as_widths, ensure_prepared, train
from medseg_mem.data.prepared import PreparedDataset
from medseg_mem.errors import MedsegError
from medseg_mem.export import export_bundle
from medseg_mem.memory.measure import MemoryReading
from medseg_mem.models.label_net import LabelUNet3D
from medseg_mem.models.unet import UNet3D

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
VARIANTS = ("full", "patch", "cascade")
pytestmark = pytest.mark.filterwarnings("ignore:parsing config_file")
STAGES = {"full": ["full"], "patch": ["patch"], "cascade": ["stage1", "stage2"]}
METADATA_KEYS = ("version", "changelog", "monai_version", "pytorch_version", "numpy_version", "task",
                 "description", "authors", "copyright", "network_data_format")  # fmt: skip
TINY = {"steps": 2, "val_every": 2, "channels": [2, 4], "progress": False}


def run_bundle(variant: str, config: str, **overrides) -> None:
    from monai.bundle import run

    run(config_file=str(BUNDLES / variant / "configs" / f"{config}.json"), **overrides)


@pytest.fixture
def no_memory_probe(monkeypatch):
    """Stub the spawned memory probe; one torch thread (tiny volumes: a second thread only contends)."""
    import torch

    monkeypatch.setattr("medseg_mem.training.run.measure_variant_memory", lambda *a, **k: MemoryReading(0, "stub", "cpu"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("variant", VARIANTS)
def test_bundle_layout_and_metadata(variant):
    root = BUNDLES / variant
    for name in ("configs/metadata.json", "configs/train.json", "configs/inference.json", "docs/README.md"):
        assert (root / name).is_file(), name
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    assert all(key in meta for key in METADATA_KEYS)
    assert set(meta["network_data_format"]) == {"inputs", "outputs"}
    for config in ("train", "inference"):
        content = json.loads((root / "configs" / f"{config}.json").read_text())
        assert content["variant"] == variant and content["work_dir"] == "medseg-work" and "run" in content


def test_inference_before_training_says_run_train_first(tmp_path):
    with pytest.raises(Exception) as caught:
        run_bundle("patch", "inference", work_dir=str(tmp_path), input_dir=str(tmp_path), progress=False)
    chain, error = [], caught.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__
    assert any("run train.json first" in message and "bundles/patch/configs/train.json" in message for message in chain)


@pytest.mark.parametrize("variant", ["full", "cascade"])
def test_train_then_infer_on_a_prepared_dataset(tmp_path, prepared_default, no_memory_probe, variant):
    settings = {"work_dir": str(tmp_path), "data_dir": str(prepared_default)}
    run_bundle(variant, "train", **settings, **TINY)
    model_dir = tmp_path / "models" / variant
    assert (model_dir / "run.json").is_file()
    assert all((model_dir / stage / "best.pt").is_file() for stage in STAGES[variant])
    run_bundle(variant, "inference", **settings, progress=False)
    assert_test_split_predicted(prepared_default, tmp_path / "predictions" / variant)


def test_patch_bundle_prepares_the_embedded_default_when_missing(tmp_path, no_memory_probe):
    run_bundle("patch", "train", work_dir=str(tmp_path), **TINY)
    assert (tmp_path / "prepared" / "manifest.json").is_file() and (tmp_path / "results.csv").is_file()
    run_bundle("patch", "inference", work_dir=str(tmp_path), progress=False)
    run_bundle("patch", "inference", work_dir=str(tmp_path), progress=False)  # a rerun replaces its outputs
    assert_test_split_predicted(tmp_path / "prepared", tmp_path / "predictions" / "patch")


def assert_test_split_predicted(data_dir: Path, out_dir: Path) -> None:
    dataset = PreparedDataset.open(data_dir)
    test = set(dataset.ids("test"))
    cases = [case for case in dataset.manifest["cases"] if case["id"] in test]
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(f"{case['id']}_seg.nii.gz" for case in cases)
    for case in cases:
        source = nib.load(str(Path(dataset.manifest["source"]) / case["image"]))
        out = nib.load(str(out_dir / f"{case['id']}_seg.nii.gz"))
        assert out.shape == source.shape and (out.affine == source.affine).all()


def test_ensure_prepared_keeps_a_prepared_folder(prepared_default):
    before = (prepared_default / "manifest.json").stat().st_mtime_ns
    assert ensure_prepared(prepared_default) == prepared_default
    assert (prepared_default / "manifest.json").stat().st_mtime_ns == before


def test_command_line_values_are_understood():
    assert as_widths("2,4") == (2, 4) and as_widths([8, 16]) == (8, 16) and as_widths((2, 4)) == (2, 4)
    assert as_bool("false", "progress") is False and as_bool(True, "progress") is True
    with pytest.raises(MedsegError, match="--channels"):
        as_widths("wide")
    with pytest.raises(MedsegError, match="--overwrite must be true or false"):
        as_bool("maybe", "overwrite")


def monai_bundle(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m monai.bundle ARGS`` in a subprocess (what a user types), one torch thread."""
    pytest.importorskip("fire")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "monai.bundle", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_inference_without_a_trained_model_is_one_line_on_the_command_line(tmp_path):
    done = monai_bundle("run", "--config_file", str(BUNDLES / "patch" / "configs" / "inference.json"), cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr + done.stdout
    (line,) = [text for text in done.stderr.splitlines() if "medseg-mem:" in text]
    assert "no trained patch checkpoint" in line and "bundles/patch/configs/train.json" in line


def test_label_network_is_the_unet_argmax_and_compiles_to_torchscript():
    torch.manual_seed(0)
    labels = LabelUNet3D(2, 3, channels=(2, 4, 8)).eval()
    plain = UNet3D(2, 3, channels=(2, 4, 8)).eval()
    plain.load_state_dict(labels.state_dict())
    x = torch.randn(1, 2, 5, 9, 13)
    out = labels(x)
    assert out.dtype == torch.uint8 and out.shape == (1, 1, 5, 9, 13)
    assert torch.equal(out[:, 0].long(), plain(x).argmax(1)) and torch.equal(torch.jit.script(labels)(x), out)


@pytest.mark.parametrize("variant", ["patch", "cascade"])
def test_exported_bundle_passes_monai_verify_net_in_out_and_ckpt_export(tmp_path, tiny_prepared, no_memory_probe,
                                                                       variant):  # fmt: skip
    model_dir = train(variant, work_dir=tmp_path, data_dir=tiny_prepared.root, **TINY)
    bundle = shutil.copytree(BUNDLES / variant, tmp_path / "bundle", ignore=shutil.ignore_patterns("models"))
    export_bundle(model_dir, bundle)
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert (pred["num_channels"], pred["dtype"], pred["format"], pred["value_range"]) == (1, "uint8", "labels", [0, 2])
    assert meta["medseg_mem"]["stages"][STAGES[variant][-1]]["channels"] == [2, 4]
    assert sorted(p.name for p in (bundle / "models").iterdir()) == sorted(
        ["model.pt"] + [f"{stage}.pt" for stage in STAGES[variant][:-1]])
    files = ["--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json"]
    verified = monai_bundle("verify_net_in_out", "--net_id", "network_def", *files, "--device", "cpu", cwd=bundle)
    assert verified.returncode == 0, verified.stderr[-2000:]
    exported = monai_bundle("ckpt_export", "network_def", "--filepath", "model.ts", "--ckpt_file", "models/model.pt",
                            *files, cwd=bundle)  # fmt: skip
    assert exported.returncode == 0, exported.stderr[-2000:]
    channels = meta["network_data_format"]["inputs"]["image"]["num_channels"]
    assert torch.jit.load(str(bundle / "model.ts"))(torch.randn(1, channels, 4, 4, 20)).dtype == torch.uint8


def test_export_refuses_a_bundle_of_another_variant(tmp_path):
    from medseg_mem.export import check_bundle

    with pytest.raises(MedsegError, match="a bundle of the patch variant, but the run is full; pass bundles/full"):
        check_bundle(BUNDLES / "patch", "full")
    with pytest.raises(MedsegError, match="not a MONAI bundle"):
        check_bundle(tmp_path, "full")


def test_the_export_command_module_imports_neither_torch_nor_monai():
    code = "import sys, medseg_mem.cli.export; print(sorted({'torch', 'monai'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
