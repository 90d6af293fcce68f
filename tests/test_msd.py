"""MSD task reading and checking: every bad input gives a message naming the file, the problem and a fix,
and ALL problems are reported together, before anything appears in the output folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medseg_mem.core.prepare_config import PrepareConfig
from medseg_mem.data.msd import case_id_of, read_task
from medseg_mem.core.errors import DatasetError


def run_prepare(task: Path, tmp_path: Path, **options):
    from medseg_mem.data.prepare import prepare

    return prepare(PrepareConfig(task_dir=task, out_dir=tmp_path / "out", **options), progress=False)


def prepare_problems(task: Path, tmp_path: Path) -> DatasetError:
    with pytest.raises(DatasetError) as caught:
        run_prepare(task, tmp_path)
    assert not (tmp_path / "out").exists(), "nothing may appear at out_dir when the task has problems"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == [], "staging folder left behind"
    return caught.value


def test_read_valid_task_lists_cases_from_dataset_json(make_msd_task, tmp_path):
    task = make_msd_task(tmp_path, n_cases=3)
    read = read_task(task)
    assert read.name == "Tiny"
    assert read.class_names == ["background", "left", "right"]
    assert read.modalities == ["MRI"]
    assert [c.case_id for c in read.cases] == ["tiny_000", "tiny_001", "tiny_002"]  # .DS_Store ignored
    assert read.cases[0].image_rel == "imagesTr/tiny_000.nii.gz"
    assert read.cases[0].label.is_file()


def test_case_id_strips_nifti_suffixes():
    assert case_id_of("hippocampus_001.nii.gz") == "hippocampus_001"
    assert case_id_of("brain.nii") == "brain"


def test_missing_task_folder(tmp_path):
    with pytest.raises(DatasetError, match="no such folder.*dataset.json"):
        read_task(tmp_path / "nope")


def test_missing_dataset_json(make_msd_task, tmp_path):
    task = make_msd_task(tmp_path)
    (task / "dataset.json").unlink()
    with pytest.raises(DatasetError, match=r"dataset.json: file not found"):
        read_task(task)


def test_invalid_json(make_msd_task, tmp_path):
    task = make_msd_task(tmp_path)
    (task / "dataset.json").write_text('{"labels": {"0": "background",}')
    with pytest.raises(DatasetError, match=r"dataset.json: invalid JSON .*line 1.*fix the syntax"):
        read_task(task)


def test_missing_keys_are_all_named(make_msd_task, edit_json, tmp_path):
    task = make_msd_task(tmp_path)
    edit_json(task, training=None, modality=None)
    with pytest.raises(DatasetError) as caught:
        read_task(task)
    assert "dataset.json: missing key(s) 'training', 'modality'" in str(caught.value)


def test_malformed_labels(make_msd_task, edit_json, tmp_path):
    task = make_msd_task(tmp_path)
    edit_json(task, labels={"0": "background", "2": "gap"})
    with pytest.raises(DatasetError, match=r"'labels' keys must be 0, 1.*got \[0, 2\]"):
        read_task(task)


def test_listed_file_missing(make_msd_task, tmp_path):
    task = make_msd_task(tmp_path)
    (task / "labelsTr" / "tiny_001.nii.gz").unlink()
    with pytest.raises(DatasetError) as caught:
        read_task(task)
    message = str(caught.value)
    assert "training[1] label './labelsTr/tiny_001.nii.gz': file not found" in message
    assert str(task) in message


def test_empty_training_list(make_msd_task, edit_json, tmp_path):
    task = make_msd_task(tmp_path)
    edit_json(task, training=[])
    with pytest.raises(DatasetError, match=r"'training' is empty; list at least one"):
        read_task(task)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_entry_leading_outside_is_refused(write_nifti, make_msd_task, edit_json, tmp_path, kind):
    task = make_msd_task(tmp_path)
    outside = write_nifti(np.ones((8, 8, 6), np.float32), tmp_path / "outside.nii.gz")
    training = json.loads((task / "dataset.json").read_text())["training"]
    if kind == "dotdot":
        training[0]["image"] = "../outside.nii.gz"
    elif kind == "absolute":
        training[0]["image"] = str(outside)
    else:
        (task / "imagesTr" / "tiny_000.nii.gz").unlink()
        (task / "imagesTr" / "tiny_000.nii.gz").symlink_to(outside)
    edit_json(task, training=training)
    with pytest.raises(DatasetError) as caught:
        read_task(task)
    expected = "is an absolute path" if kind == "absolute" else "leads outside the task folder"
    assert "training[0] image" in str(caught.value) and expected in str(caught.value)


def test_duplicate_case_ids(make_msd_task, edit_json, tmp_path):
    task = make_msd_task(tmp_path, n_cases=2)
    training = json.loads((task / "dataset.json").read_text())["training"]
    edit_json(task, training=training + [training[0]])
    with pytest.raises(DatasetError, match=r"training\[2\]: case id 'tiny_000' repeats training\[0\]"):
        read_task(task)


def test_all_listing_problems_reported_together(make_msd_task, edit_json, tmp_path):
    task = make_msd_task(tmp_path, n_cases=3)
    training = json.loads((task / "dataset.json").read_text())["training"]
    training[0]["image"] = "./imagesTr/missing.nii.gz"
    training[1]["label"] = "../../etc/passwd.nii.gz"
    edit_json(task, training=training, modality={"zero": "MRI"})
    with pytest.raises(DatasetError) as caught:
        read_task(task)
    assert len(caught.value.problems) == 3
    message = str(caught.value)
    assert "3 problem(s)" in message
    assert "missing.nii.gz': file not found" in message
    assert "leads outside the task folder" in message
    assert "'modality' key 'zero' is not an integer" in message


def test_corrupt_nifti(make_msd_task, tmp_path):
    task = make_msd_task(tmp_path)
    (task / "imagesTr" / "tiny_002.nii.gz").write_bytes(b"this is not a NIfTI file")
    error = prepare_problems(task, tmp_path)
    assert "imagesTr/tiny_002.nii.gz: cannot be read as NIfTI" in str(error)
    assert "re-export or replace the file" in str(error)


def test_truncated_nifti(make_msd_task, tmp_path):
    task = make_msd_task(tmp_path, shape=(40, 40, 40))
    path = task / "labelsTr" / "tiny_001.nii.gz"
    path.write_bytes(path.read_bytes()[:600])
    error = prepare_problems(task, tmp_path)
    assert "labelsTr/tiny_001.nii.gz: cannot be read as NIfTI" in str(error)


def test_image_and_label_of_different_shape(write_nifti, make_msd_task, tmp_path):
    task = make_msd_task(tmp_path)
    write_nifti(np.zeros((8, 8, 5), np.uint8), task / "labelsTr" / "tiny_001.nii.gz")
    error = prepare_problems(task, tmp_path)
    assert "labelsTr/tiny_001.nii.gz: shape 8x8x5 differs from its image imagesTr/tiny_001.nii.gz 8x8x6" in str(error)


def test_image_and_label_of_different_affine(write_nifti, make_msd_task, tmp_path):
    task = make_msd_task(tmp_path)
    write_nifti(np.zeros((8, 8, 6), np.uint8), task / "labelsTr" / "tiny_000.nii.gz", np.diag([2.0, 1, 1, 1]))
    error = prepare_problems(task, tmp_path)
    assert "labelsTr/tiny_000.nii.gz: affine differs from its image" in str(error)


def test_undeclared_label_values(write_nifti, make_msd_task, tmp_path):
    task = make_msd_task(tmp_path)
    label = np.zeros((8, 8, 6), np.float32)
    label[0, 0, 0], label[1, 1, 1], label[2, 2, 2] = 7, 2.5, 1
    write_nifti(label, task / "labelsTr" / "tiny_003.nii.gz")
    message = str(prepare_problems(task, tmp_path))
    assert "labelsTr/tiny_003.nii.gz: label value(s) 7 not declared in dataset.json 'labels' (0..2)" in message
    assert "labelsTr/tiny_003.nii.gz: holds non-integer label value(s) 2.5" in message


def test_channel_count_not_matching_modality(make_msd_task, edit_json, tmp_path):
    task = make_msd_task(tmp_path, channels=4)
    edit_json(task, modality={"0": "FLAIR", "1": "T1w"})
    error = prepare_problems(task, tmp_path)
    assert len(error.problems) == 4  # every case
    assert "imagesTr/tiny_000.nii.gz: has 4 channel(s) but dataset.json 'modality' names 2 (FLAIR, T1w)" in str(error)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_image(write_nifti, make_msd_task, tmp_path, bad):
    task = make_msd_task(tmp_path)
    image = np.ones((8, 8, 6), np.float32)
    image[1, 2, 3] = bad
    write_nifti(image, task / "imagesTr" / "tiny_001.nii.gz")
    error = prepare_problems(task, tmp_path)
    assert "imagesTr/tiny_001.nii.gz: holds 1 NaN/inf value(s)" in str(error)


def test_all_case_problems_reported_together(write_nifti, make_msd_task, tmp_path):
    task = make_msd_task(tmp_path, n_cases=5)
    (task / "imagesTr" / "tiny_000.nii.gz").write_bytes(b"garbage")
    write_nifti(np.zeros((8, 8, 5), np.uint8), task / "labelsTr" / "tiny_002.nii.gz")
    image = np.full((8, 8, 6), np.nan, np.float32)
    write_nifti(image, task / "imagesTr" / "tiny_004.nii.gz")
    error = prepare_problems(task, tmp_path)
    assert len(error.problems) == 3
    for name in ("imagesTr/tiny_000", "labelsTr/tiny_002", "imagesTr/tiny_004"):
        assert name in str(error)


def test_problems_found_in_the_survey_pass_too(write_nifti, make_msd_task, tmp_path):
    """With --spacing median the cases are loaded twice; problems still come back together."""
    task = make_msd_task(tmp_path, n_cases=3)
    (task / "imagesTr" / "tiny_000.nii.gz").write_bytes(b"garbage")
    write_nifti(np.zeros((8, 8, 5), np.uint8), task / "labelsTr" / "tiny_002.nii.gz")
    with pytest.raises(DatasetError) as caught:
        run_prepare(task, tmp_path, spacing="median")
    assert len(caught.value.problems) == 2
    assert not (tmp_path / "out").exists()
