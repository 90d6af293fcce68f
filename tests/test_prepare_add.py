"""``medseg-mem prepare --add``: new and corrected cases join a prepared dataset with its settings and split kept."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from medseg_mem.cli import main
from medseg_mem.data.prepared import PreparedDataset

from test_cli_prepare import assert_one_line_error


def invoke(*args):
    return CliRunner().invoke(main, ["prepare", *map(str, args)])


def grown_task(make_msd_task, root: Path, extra: int = 2, **options) -> Path:
    """A 5-case task, and beside it (``root/more``) the same task with ``extra`` cases more (same first cases)."""
    small = make_msd_task(root, n_cases=5, **options)
    large = make_msd_task(root / "more", n_cases=5 + extra, **options)
    for sub in ("imagesTr", "labelsTr"):  # the first five cases byte for byte the same as the small task's
        for path in (small / sub).glob("*.nii.gz"):
            shutil.copy2(path, large / sub / path.name)
    return small, large


def test_add_prepares_only_new_cases_and_keeps_the_split(make_msd_task, tmp_path, checksums):
    small, large = grown_task(make_msd_task, tmp_path)
    out = tmp_path / "prep"
    assert invoke(small, "--out", out, "--crop-foreground").exit_code == 0
    before, split = checksums(out / "cases"), PreparedDataset.open(out).split
    result = invoke(large, "--out", out, "--add")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == result.stdout.strip().splitlines()[0]
    assert result.stdout.startswith(f"added 2 new and 0 corrected case(s) of Tiny to {out}: split 5/1/1")
    data = PreparedDataset.open(out)
    assert data.ids("val") == split["val"] and data.ids("test") == split["test"]
    assert data.ids("train") == split["train"] + ["tiny_005", "tiny_006"]
    after = checksums(out / "cases")
    assert {k: v for k, v in after.items() if k in before} == before  # the old cases untouched
    assert data.manifest["preprocessing"]["crop_foreground"] is True  # the recorded settings, not the defaults
    assert invoke(large, "--out", out, "--add").stdout.startswith("added 0 new and 0 corrected")


def test_corrected_case_is_replaced_in_its_split(make_msd_task, tmp_path, write_nifti):
    small, _ = grown_task(make_msd_task, tmp_path, extra=0)
    out = tmp_path / "prep"
    assert invoke(small, "--out", out).exit_code == 0
    test_case = PreparedDataset.open(out).ids("test")[0]
    label_path = small / "labelsTr" / f"{test_case}.nii.gz"
    corrected = np.zeros((8, 8, 6), np.uint8)
    corrected[2:4, 2:4, 2:4] = 2
    write_nifti(corrected, label_path)
    result = invoke(small, "--out", out, "--add", "--add-split", "val")
    assert result.exit_code == 0, result.output
    assert "added 0 new and 1 corrected" in result.stdout
    data = PreparedDataset.open(out)
    assert test_case in data.ids("test") and len(data) == 5
    assert np.array_equal(np.asarray(data.load(test_case).label)[0], corrected)


def test_add_split_option_sends_new_cases_to_test(make_msd_task, tmp_path):
    small, large = grown_task(make_msd_task, tmp_path, extra=1)
    assert invoke(small, "--out", tmp_path / "prep").exit_code == 0
    assert invoke(large, "--out", tmp_path / "prep", "--add", "--add-split", "test").exit_code == 0
    assert "tiny_005" in PreparedDataset.open(tmp_path / "prep").ids("test")


def test_add_refuses_other_classes_channels_and_spacing(make_msd_task, tmp_path, edit_json):
    small, large = grown_task(make_msd_task, tmp_path, extra=1)
    out = tmp_path / "prep"
    assert invoke(small, "--out", out).exit_code == 0
    manifest = (out / "manifest.json").read_bytes()
    assert_one_line_error(invoke(large, "--out", out, "--add", "--spacing", "1,1,2"), 1,
                          "--spacing 1,1,2", "native", "drop --spacing")
    other = make_msd_task(tmp_path / "other", n_cases=3, labels={"0": "background", "1": "left"})
    assert_one_line_error(invoke(other, "--out", out, "--add"), 1, "classes ['background', 'left']",
                          "['background', 'left', 'right']")
    four = make_msd_task(tmp_path / "four", n_cases=3, channels=4)
    assert_one_line_error(invoke(four, "--out", out, "--add"), 1, "channels ['FLAIR'", "['MRI']")
    assert_one_line_error(invoke(large, "--out", out, "--add", "--seed", 3), 2, "--seed", "drop --seed")
    assert_one_line_error(invoke(large, "--out", tmp_path / "none", "--add"), 1, "no prepared dataset",
                          "without --add")
    assert (out / "manifest.json").read_bytes() == manifest


def test_failed_add_leaves_the_dataset_as_it_was(make_msd_task, tmp_path, checksums):
    small, large = grown_task(make_msd_task, tmp_path, extra=1)
    out = tmp_path / "prep"
    assert invoke(small, "--out", out).exit_code == 0
    before = checksums(out)
    (large / "labelsTr" / "tiny_005.nii.gz").write_bytes(b"not a nifti")
    result = invoke(large, "--out", out, "--add")
    assert result.exit_code != 0 and "tiny_005" in result.output and "Traceback" not in result.output
    assert checksums(out) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".prep")) == [] or all(
        p.suffix == ".lock" for p in tmp_path.iterdir() if p.name.startswith(".prep"))


def test_add_without_task_dir_reads_the_recorded_source(make_msd_task, tmp_path):
    small, _ = grown_task(make_msd_task, tmp_path, extra=0)
    out = tmp_path / "prep"
    assert invoke(small, "--out", out).exit_code == 0
    result = invoke("--out", out, "--add")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "manifest.json").read_text())["source"] == str(small.resolve())
