"""``medseg_mem.predict``: label maps land in the input's own grid, inputs fail one by one, checkpoints are checked.

The geometry tests use an analytic "network": the variant's ``segment`` is replaced by one that labels every
voxel whose normalised intensity is above zero. Z-scoring over nonzero voxels is monotone, so that label must
coincide voxel for voxel with the bright structure of the INPUT file; any slip in undoing orientation,
spacing or cropping shows up as a mismatch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg_mem.core.files.checkpoint import save_checkpoint
from medseg_mem.core.config import ModelConfig
from medseg_mem.data.transforms import make_settings
from medseg_mem.core.errors import MedsegError
from medseg_mem.predict import predict
from medseg_mem.variants.trained_run import open_trained_run
from medseg_mem.predict.files import collect_inputs, plan_outputs
from medseg_mem.models.build import build_network
from medseg_mem.variants import get_variant

CLASSES = ("background", "bright", "other")
# LPS-like and permuted: file axis 0 runs posterior, axis 1 superior, axis 2 left; 1.5/2.0/1.5 mm; offset origin
TILTED = np.array([[0.0, 0.0, -1.5, 40.0], [-1.5, 0.0, 0.0, -20.0], [0.0, 2.0, 0.0, 7.0], [0.0, 0.0, 0.0, 1.0]])


def make_run(root: Path, variant: str = "patch", settings=None, modalities: Sequence[str] = ("MRI",), **meta) -> Path:
    """A run folder with randomly initialised (untrained) networks for every stage of ``variant``."""
    run_dir = Path(root) / f"run-{variant}"
    model = ModelConfig(channels=(2, 4), slab_size=4, downsample=0.5)
    settings = settings or make_settings(list(modalities))
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"run_id": run_dir.name, "variant": variant}))
    for stage in get_variant(variant).stages():
        in_channels = stage.in_channels(len(modalities), len(CLASSES), model)
        net = build_network(in_channels, len(CLASSES), model)
        spec = {"channels": [2, 4], "slab_size": 4, "downsample": model.downsample, "guidance": model.guidance,
                "in_channels": in_channels, "num_classes": len(CLASSES)}  # fmt: skip
        info = {"dataset": "Tiny", "class_names": list(CLASSES), "modalities": list(modalities),
                "preprocessing": settings, **meta.get(stage.name, {})}  # fmt: skip
        payload = {"variant": variant, "stage": stage.name, "step": 1, "state_dict": net.state_dict(), "model": spec}
        save_checkpoint(run_dir / stage.name / "best.pt", {**payload, "meta": info})
    return run_dir


def bright_scan(shape=(20, 24, 18)) -> np.ndarray:
    """Zero border, dim tissue (10) and two bright blocks (100): the structure is ``scan > 50``."""
    scan = np.zeros(shape, np.float32)
    scan[2:-2, 3:-3, 2:-2] = 10.0
    scan[5:9, 6:15, 4:7] = 100.0
    scan[12:14, 10:12, 9:15] = 100.0
    return scan


def save_tilted(array: np.ndarray, path: Path, affine: np.ndarray = TILTED) -> Path:
    image = nib.Nifti1Image(array, affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return path


def threshold_probabilities(self, run, image):
    """Analytic stand-in for a trained variant: class 1 where the first channel is above zero."""
    bright = (image[:, :1] > 0).float()
    rest = torch.zeros_like(bright).repeat(1, run.num_classes - 2, 1, 1, 1)
    return torch.cat([1 - bright, bright, rest], dim=1)


def threshold_labels(self, run, image):
    """The label map of :func:`threshold_probabilities`, as ``segment`` returns it (uint8, where ``run`` keeps
    label maps)."""
    device = next(iter(run.stages.values())).device
    return (image[:, :1] > 0).to(torch.uint8).to(device or image.device)


@pytest.fixture
def analytic(monkeypatch):
    for name in ("full", "patch", "cascade"):
        monkeypatch.setattr(type(get_variant(name)), "segment", threshold_labels)
        monkeypatch.setattr(type(get_variant(name)), "probabilities", threshold_probabilities)


@pytest.mark.parametrize("crop", [False, True], ids=["native", "crop-foreground"])
def test_labels_land_on_the_structure_in_the_input_grid(tmp_path, analytic, crop):
    run = make_run(tmp_path, settings=make_settings(["MRI"], crop_foreground=crop))
    scan = save_tilted(bright_scan(), tmp_path / "in" / "case_7.nii.gz")
    summary = predict(run, [scan], tmp_path / "out", progress=False)
    assert summary.ok and summary.written == (tmp_path / "out" / "case_7_seg.nii.gz",)
    out, source = nib.load(str(summary.written[0])), nib.load(str(scan))
    assert out.shape == source.shape and np.allclose(out.affine, source.affine, atol=1e-6)
    assert out.get_data_dtype() == np.uint8
    assert out.header.get_sform(coded=True)[1] == 2 and out.header.get_qform(coded=True)[1] == 1
    np.testing.assert_array_equal(np.asarray(out.dataobj), (bright_scan() > 50).astype(np.uint8))


def test_resampled_run_restores_shape_and_affine(tmp_path, analytic):
    run = make_run(tmp_path, settings=make_settings(["MRI"], spacing=(1.0, 1.0, 1.0)))
    scan = save_tilted(bright_scan(), tmp_path / "case.nii.gz")
    (written,) = predict(run, [scan], tmp_path / "out", progress=False).written
    out = nib.load(str(written))
    assert out.shape == bright_scan().shape and np.allclose(out.affine, TILTED)
    agreement = (np.asarray(out.dataobj) == (bright_scan() > 50)).mean()
    assert agreement > 0.99  # resampled twice (1.5/2 mm -> 1 mm -> back): only block borders may move


def test_four_d_input_gives_a_three_d_label_map(tmp_path, analytic):
    run = make_run(tmp_path, modalities=("T1", "T2"))
    scan = np.stack([bright_scan(), bright_scan() * 0.5 + 1], axis=-1)
    path = save_tilted(scan, tmp_path / "multi.nii.gz")
    (written,) = predict(run, [path], tmp_path / "out", progress=False).written
    out = nib.load(str(written))
    assert out.shape == bright_scan().shape and np.allclose(out.affine, TILTED)
    np.testing.assert_array_equal(np.asarray(out.dataobj), bright_scan() > 50)


def test_folder_input_segments_every_nifti_in_it(tmp_path, analytic):
    run = make_run(tmp_path)
    folder = tmp_path / "scans"
    for name in ("a.nii.gz", "b.nii"):
        save_tilted(bright_scan(), folder / name)
    (folder / "notes.txt").write_text("not a scan")
    (folder / ".hidden.nii.gz").write_bytes(b"junk")
    summary = predict(run, [folder], tmp_path / "out", progress=False)
    assert [p.name for p in summary.written] == ["a_seg.nii.gz", "b_seg.nii.gz"]


def test_existing_outputs_are_refused_unless_overwrite(tmp_path, analytic):
    run, scan = make_run(tmp_path), save_tilted(bright_scan(), tmp_path / "s.nii.gz")
    target = tmp_path / "out" / "s_seg.nii.gz"
    target.parent.mkdir()
    target.write_bytes(b"old")
    with pytest.raises(MedsegError, match=r"s_seg\.nii\.gz.*--overwrite"):
        predict(run, [scan], tmp_path / "out", progress=False)
    assert target.read_bytes() == b"old"
    predict(run, [scan], tmp_path / "out", overwrite=True, progress=False)
    assert nib.load(str(target)).shape == bright_scan().shape
    assert [p.name for p in target.parent.iterdir()] == ["s_seg.nii.gz"]  # no temp file left behind


def test_bad_inputs_are_named_and_the_others_still_written(tmp_path, analytic):
    run = make_run(tmp_path)
    good = save_tilted(bright_scan(), tmp_path / "in" / "good.nii.gz")
    corrupt = tmp_path / "in" / "corrupt.nii.gz"
    corrupt.write_bytes(good.read_bytes()[:200])
    two_channel = save_tilted(np.stack([bright_scan()] * 2, axis=-1), tmp_path / "in" / "twochannel.nii.gz")
    summary = predict(run, [corrupt, two_channel, good], tmp_path / "out", progress=False)
    assert not summary.ok and [p.name for p in summary.written] == ["good_seg.nii.gz"]
    reasons = dict(summary.failed)
    assert "corrupt.nii.gz: cannot be read as NIfTI" in reasons[corrupt]
    assert "has 2 channel(s), the checkpoint expects 1 (MRI)" in reasons[two_channel]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good_seg.nii.gz"]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_a_scan_with_nan_or_inf_is_refused_by_name(tmp_path, analytic, monkeypatch, bad):
    monkeypatch.setattr("medseg_mem.data.normalize.CHUNK_VOXELS", 64)  # checked slab by slab: many slabs here
    scan = bright_scan()
    scan[3, 4, -1] = bad
    path = save_tilted(scan, tmp_path / "in" / "bad.nii.gz")
    summary = predict(make_run(tmp_path), [path], tmp_path / "out", progress=False)
    assert "bad.nii.gz: contains NaN or infinite values" in dict(summary.failed)[path]


def test_cascade_run_with_real_networks(tmp_path):
    run = make_run(tmp_path, "cascade")
    scan = save_tilted(bright_scan(), tmp_path / "c.nii.gz")
    for checkpoint in (run, run / "stage1" / "best.pt"):  # the folder or any .pt inside it
        summary = predict(checkpoint, [scan], tmp_path / "out", overwrite=True, device="cpu", progress=False)
        out = nib.load(str(summary.written[0]))
        assert summary.variant == "cascade" and out.shape == bright_scan().shape
        assert np.allclose(out.affine, TILTED) and np.asarray(out.dataobj).max() < len(CLASSES)


def test_trained_run_resolves_every_stage(tmp_path):
    run = make_run(tmp_path, "cascade")
    trained = open_trained_run(run / "stage2" / "best.pt")
    assert trained.variant == "cascade" and set(trained.paths) == {"stage1", "stage2"}
    assert trained.paths["stage1"] == run / "stage1" / "best.pt" and trained.class_names == CLASSES
    assert trained.model.slab_size == 4 and trained.modalities == ("MRI",)


def test_checkpoint_of_the_wrong_kind_is_one_clear_line(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(MedsegError, match="not a medseg-mem checkpoint") as caught:
        predict(other, [tmp_path], tmp_path / "out", progress=False)
    assert "\n" not in str(caught.value)
    tampered = tmp_path / "tampered.pt"
    torch.save({"format": "medseg-mem-checkpoint/1", "hook": ModelConfig()}, tampered)
    with pytest.raises(MedsegError, match="cannot be read safely"):
        open_trained_run(tampered)


def test_incomplete_and_mixed_runs_are_refused(tmp_path):
    run = make_run(tmp_path, "cascade", stage2={"class_names": ["background", "x", "y"]})
    with pytest.raises(MedsegError, match="disagrees with .* on class_names"):
        open_trained_run(run)
    (run / "stage2" / "best.pt").unlink()
    with pytest.raises(MedsegError, match=r"lacks stage2/best\.pt.*--resume run-cascade"):
        open_trained_run(run)
    with pytest.raises(MedsegError, match="not a run folder"):
        open_trained_run(tmp_path)


def test_input_errors_name_the_path(tmp_path):
    with pytest.raises(MedsegError, match="no such file or folder"):
        collect_inputs([tmp_path / "missing.nii.gz"])
    (tmp_path / "scan.mha").write_bytes(b"x")
    with pytest.raises(MedsegError, match=r"scan\.mha: not a NIfTI file"):
        collect_inputs([tmp_path / "scan.mha"])
    with pytest.raises(MedsegError, match="holds no"):
        collect_inputs([tmp_path])
    clash = [tmp_path / "a" / "s.nii.gz", tmp_path / "b" / "s.nii"]
    with pytest.raises(MedsegError, match="both would be written to"):
        plan_outputs(clash, tmp_path / "out", overwrite=False)
