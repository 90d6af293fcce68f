"""``medseg-mem suggest``: uncertainty scores, the ranking CSV and label maps, and one-line refusals."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from medseg_mem.cli import main
from medseg_mem.predict.uncertainty import agreement, foreground_entropy

from test_init_from import TINY, one_error


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prepared_default):
    """A tiny trained ``full`` run on the embedded default and four of its task's scans: ``(run folder, scans)``."""
    root = tmp_path_factory.mktemp("suggest")
    result = CliRunner().invoke(main, ["run", "--variant", "full", "--data", str(prepared_default), "--runs",
                                       str(root / "runs"), "--results", str(root / "r.csv"), *TINY])  # fmt: skip
    assert result.exit_code == 0, result.output
    run_id = pd.read_csv(root / "r.csv").run_id.iloc[0]
    images = sorted((prepared_default.parent / "Task00_SyntheticRods" / "imagesTr").glob("*.nii.gz"))[:4]
    scans = root / "scans"
    scans.mkdir()
    for image in images:
        (scans / image.name).symlink_to(image)
    return root / "runs" / run_id, scans


def test_entropy_is_low_for_sure_voxels_and_one_without_foreground():
    sure = torch.zeros(1, 2, 2, 2, 2)
    sure[:, 1] = 1.0
    assert foreground_entropy(sure) == pytest.approx(0.0, abs=1e-6)
    unsure = torch.full((1, 2, 2, 2, 2), 0.5)
    unsure[:, 1] += 1e-3
    assert foreground_entropy(unsure) == pytest.approx(1.0, abs=1e-3)
    assert foreground_entropy(torch.stack([torch.ones(2, 2, 2), torch.zeros(2, 2, 2)])[None]) == 1.0


def test_agreement_counts_only_foreground_voxels():
    a = torch.tensor([0, 0, 1, 1, 2])
    assert agreement(a, a) == 1.0
    assert agreement(a, torch.tensor([0, 1, 1, 2, 2])) == pytest.approx(2 / 4)
    assert agreement(torch.zeros(3), torch.zeros(3)) == 1.0


def test_stage_disagreement_of_a_cascade_is_a_fraction():
    from medseg_mem.core.config import ModelConfig
    from medseg_mem.models.build import build_network
    from medseg_mem.predict.uncertainty import stage_disagreement
    from medseg_mem.variants import TrainedVariant, get_variant

    torch.manual_seed(0)
    variant, model = get_variant("cascade"), ModelConfig(channels=(2, 4), slab_size=4, downsample=0.5)
    nets = {s.name: build_network(s.in_channels(1, 3, model), 3, model).eval() for s in variant.stages()}
    image = torch.randn(1, 1, 8, 8, 8)
    run = TrainedVariant(variant, nets, model, 3)
    with torch.inference_mode():
        plain = run.probabilities(image)
        score = stage_disagreement(run, image, plain)
    assert 0.0 <= score <= 1.0


@pytest.mark.parametrize("score", ["entropy", "mirror"])
def test_suggest_writes_the_ranking_and_label_maps_of_the_first(trained, tmp_path, score):
    run, scans = trained
    out = tmp_path / "next"
    result = CliRunner().invoke(main, ["suggest", "--checkpoint", str(run), str(scans), "--count", "2", "--score",
                                       score, "--out", str(out), "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"ranked 4 scan(s) by {score}; annotate next: ")
    rows = list(csv.DictReader((out / "ranking.csv").open()))
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4]
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert [bool(r["label"]) for r in rows] == [True, True, False, False]
    for row in rows[:2]:
        label, image = nib.load(row["label"]), nib.load(row["scan"])
        assert label.shape == image.shape and np.allclose(label.affine, image.affine)
    assert sorted(p.name for p in out.glob("*_seg.nii.gz")) == sorted(Path(r["label"]).name for r in rows[:2])


def test_rank_scans_library_call_returns_label_maps_without_writing(trained):
    from medseg_mem.predict.suggest import rank_scans

    run, scans = trained
    ranked = rank_scans(run, [scans], count=1, device="cpu")
    assert [r.rank for r in ranked] == [1, 2, 3, 4] and ranked[0].label is None
    assert ranked[0].labels.shape == nib.load(ranked[0].scan).shape and ranked[1].labels is None


def test_refusals_are_one_line(trained, tmp_path):
    run, scans = trained

    def suggest(*args):
        return CliRunner().invoke(main, ["suggest", *map(str, args)])

    one_error(suggest("--checkpoint", run, scans, "--count", 0, "--out", tmp_path / "a"), "--count", "at least 1")
    one_error(suggest("--checkpoint", run, "--count", 2, "--out", tmp_path / "a"), "SCAN", "give the unlabelled")
    one_error(suggest("--checkpoint", run, scans, "--count", 1, "--score", "stages", "--out", tmp_path / "a"),
              "--score stages", "full run")
    one_error(suggest("--checkpoint", tmp_path / "nothing", scans, "--count", 1, "--out", tmp_path / "a"),
              str(tmp_path / "nothing"))
    assert not (tmp_path / "a" / "ranking.csv").exists()
    assert suggest("--checkpoint", run, scans, "--count", 1, "--out", tmp_path / "b", "--quiet").exit_code == 0
    one_error(suggest("--checkpoint", run, scans, "--count", 1, "--out", tmp_path / "b"), "--overwrite")
