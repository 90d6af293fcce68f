"""The MONAI bundles in ``bundles/``: metadata, configs, and train.json then inference.json run in-process.

Each bundle is run through ``monai.bundle.run`` (what ``python -m monai.bundle run`` calls) with tiny settings in
a temporary work folder. Peak-memory measurement (a spawned process, tested in test_measure.py) is stubbed to
keep the suite fast, and torch runs on one thread.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import pytest

from medseg_mem.bundle import as_bool, as_widths, ensure_prepared
from medseg_mem.data.prepared import PreparedDataset
from medseg_mem.errors import MedsegError
from medseg_mem.memory.measure import MemoryReading

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
