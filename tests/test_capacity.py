"""The capacity task BratsLike (``prepare --synthetic brats-like``): layout, determinism, anatomy, CLI and errors.

Tiny shapes only (the generator's minimum is 20 per side), so every test takes seconds.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from medseg_mem.cli import main
from medseg_mem.data import PreparedDataset, capacity
from medseg_mem.data.capacity import make_case, write_brats_like_task
from medseg_mem.data.prepare import default_task_dir
from medseg_mem.core.errors import MedsegError

TINY = (24, 24, 20)


def load(path):
    import nibabel as nib

    image = nib.load(str(path))
    return np.asanyarray(image.dataobj), image


def neighbour_labels(label: np.ndarray, value: int) -> set:
    """Labels found among the 6-neighbours of the voxels labelled ``value`` (255 marks outside the volume)."""
    padded = np.pad(label, 1, constant_values=255)
    points = np.argwhere(label == value) + 1
    found = set()
    for step in np.vstack([np.eye(3, dtype=int), -np.eye(3, dtype=int)]):
        found |= set(np.unique(padded[tuple((points + step).T)]).tolist())
    return found


def test_writes_an_msd_brain_tumour_task(tmp_path):
    task = write_brats_like_task(tmp_path / capacity.TASK_FOLDER, seed=0, n_cases=3, shape=TINY)
    meta = json.loads((task / "dataset.json").read_text())
    assert meta["name"] == "BratsLike" and meta["tensorImageSize"] == "4D"
    assert meta["modality"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    assert meta["labels"] == {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}
    assert meta["numTraining"] == 3 and len(meta["training"]) == 3
    assert meta["training"][0] == {"image": "./imagesTr/brats_000.nii", "label": "./labelsTr/brats_000.nii"}
    assert sorted(p.name for p in task.iterdir()) == ["dataset.json", "imagesTr", "labelsTr"]
    assert sorted(p.name for p in (task / "imagesTr").iterdir()) == [f"brats_00{i}.nii" for i in range(3)]
    image, header = load(task / meta["training"][2]["image"])
    label, _ = load(task / meta["training"][2]["label"])
    assert image.shape == TINY + (4,) and image.dtype == np.float32
    assert label.shape == TINY and label.dtype == np.uint8
    np.testing.assert_array_equal(header.affine, np.eye(4))
    assert [p.name for p in tmp_path.iterdir()] == [capacity.TASK_FOLDER]  # no staging leftovers


def test_same_seed_gives_identical_bytes_other_seed_differs(tmp_path):
    first = write_brats_like_task(tmp_path / "a", seed=5, n_cases=2, shape=TINY)
    second = write_brats_like_task(tmp_path / "b", seed=5, n_cases=2, shape=TINY)
    other = write_brats_like_task(tmp_path / "c", seed=6, n_cases=2, shape=TINY)
    for name in ("imagesTr/brats_001.nii", "labelsTr/brats_001.nii", "dataset.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    for name in ("imagesTr/brats_000.nii", "labelsTr/brats_000.nii"):
        assert (first / name).read_bytes() != (other / name).read_bytes()
    image, label = make_case(5, 1, TINY)
    np.testing.assert_array_equal(load(first / "imagesTr/brats_001.nii")[0], image)
    np.testing.assert_array_equal(load(first / "labelsTr/brats_001.nii")[0], label)
    assert not np.array_equal(make_case(5, 0, TINY)[1], label), "cases differ within a task"


@pytest.mark.parametrize("shape", [(20, 20, 20), TINY, (48, 40, 31)])
def test_every_case_holds_every_class_nested(shape):
    for index in range(6):
        image, label = make_case(0, index, shape)
        assert image.shape == shape + (4,) and image.dtype == np.float32 and label.dtype == np.uint8
        assert sorted(np.unique(label).tolist()) == [0, 1, 2, 3], (shape, index)
        assert neighbour_labels(label, 2) <= {2, 3}, "the non-enhancing core lies inside the enhancing rim"
        assert neighbour_labels(label, 3) <= {1, 2, 3}, "the enhancing rim lies inside the edema"


def test_skull_stripped_brain_with_channel_specific_contrast():
    scales = []
    for index in range(4):
        image, label = make_case(0, index, (40, 40, 30))
        brain = image[..., 0] != 0
        assert np.array_equal(brain, (image != 0).all(axis=-1)), "every channel is zero exactly outside the brain"
        assert 0.1 < brain.mean() < 0.5 and not brain[0].any() and not brain[:, :, -1].any()
        assert brain[label > 0].all(), "the tumour counts as brain"
        assert np.isfinite(image).all() and image.min() >= 0
        mean = {k: image[label == k].mean(axis=0) for k in (1, 2, 3)}
        tissue = image[brain & (label == 0)].mean(axis=0)
        flair, t1gd, t2w = 0, 2, 3
        assert mean[1][flair] > 1.4 * tissue[flair], "edema is bright in FLAIR"
        assert mean[3][t1gd] > 1.5 * tissue[t1gd] and mean[3][t1gd] > 1.5 * mean[2][t1gd], "the rim enhances"
        assert mean[2][t2w] > 1.5 * tissue[t2w], "the necrotic core is bright in T2w"
        scales.append(tissue / tissue[1])
    assert np.ptp(np.array(scales), axis=0).max() > 0.3, "channel scales vary between cases"


def test_rewrite_replaces_and_foreign_folder_is_refused(tmp_path):
    dest = tmp_path / capacity.TASK_FOLDER
    write_brats_like_task(dest, n_cases=2, shape=TINY)
    write_brats_like_task(dest, n_cases=1, shape=TINY)
    assert sorted(p.name for p in (dest / "imagesTr").iterdir()) == ["brats_000.nii"]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(MedsegError, match="holds something other than the generated BratsLike task"):
        write_brats_like_task(foreign, n_cases=1, shape=TINY)
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_fewer_channels_are_the_first_modalities_of_the_same_case(tmp_path):
    task = write_brats_like_task(tmp_path / capacity.TASK_FOLDER, n_cases=1, shape=TINY, channels=2)
    meta = json.loads((task / "dataset.json").read_text())
    image, _ = load(task / "imagesTr" / "brats_000.nii")
    assert meta["modality"] == {"0": "FLAIR", "1": "T1w"} and image.shape == (*TINY, 2)
    np.testing.assert_array_equal(image, make_case(0, 0, TINY)[0][..., :2])


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"shape": (24, 24, 19)}, r"--shape\) of the BratsLike task must be three sizes X,Y,Z, each >= 20"),
        ({"shape": (24, 24)}, "must be three sizes"),
        ({"n_cases": 0}, r"n_cases \(--cases\) must be >= 1"),
        ({"seed": -1}, "seed >= 0"),
        ({"channels": 5}, "channels of the BratsLike task must be 1 to 4; got 5"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, kwargs, fragment):
    with pytest.raises(MedsegError, match=fragment):
        write_brats_like_task(tmp_path / "t", **{"n_cases": 1, "shape": TINY, **kwargs})
    assert not (tmp_path / "t").exists()


def test_default_task_dir_per_generated_task(tmp_path):
    assert default_task_dir(tmp_path / "prepared") == tmp_path / "Task00_SyntheticRods"
    assert default_task_dir(tmp_path / "prepared", "brats-like") == tmp_path / "Task90_BratsLike"
    with pytest.raises(MedsegError, match="--synthetic must be one of rods, brats-like; got 'nope'"):
        default_task_dir(tmp_path / "prepared", "nope")


def invoke(*args):
    return CliRunner().invoke(main, ["prepare", *map(str, args)])


def test_cli_prepares_the_capacity_task(tmp_path):
    out = tmp_path / "prepared"
    result = invoke("--synthetic", "brats-like", "--cases", 4, "--shape", "24,24,20", "--out", out)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().startswith(f"prepared 4 cases of BratsLike into {out}: 4 classes")
    assert "4 channel(s), shapes 24x24x20" in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["in_channels"] == 4 and manifest["modalities"] == ["FLAIR", "T1w", "t1gd", "T2w"]
    assert len(manifest["class_names"]) == 4 and len(manifest["cases"]) == 4
    assert manifest["source"] == str((tmp_path / "Task90_BratsLike").resolve())
    data = PreparedDataset.open(out)
    case = data.load(data.ids("train")[0])
    assert case.image.shape == (4, 24, 24, 20) and case.label.shape == (1, 24, 24, 20)
    assert sorted(np.unique(case.label).tolist()) == [0, 1, 2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Task90_BratsLike", "prepared"]
    again = invoke("--synthetic", "brats-like", "--cases", 3, "--shape", "20,20,20", "--out", out)
    assert again.exit_code == 0, again.output  # a rerun replaces the generated task and the derived data
    assert len(json.loads((out / "manifest.json").read_text())["cases"]) == 3


def test_cli_cases_and_shape_apply_to_the_rods_too(tmp_path):
    result = invoke("--cases", 5, "--shape", "28,28,80", "--out", tmp_path / "prepared")
    assert result.exit_code == 0, result.output
    assert "prepared 5 cases of SyntheticRods" in result.stdout and "shapes 28x28x80" in result.stdout


@pytest.mark.parametrize(
    "args, code, fragment",
    [
        (["--cases", "0"], 2, "Invalid value for '--cases': 0 is not in the range x>=3"),
        (["--cases", "2"], 2, "2 is not in the range x>=3"),
        (["--shape", "1,2"], 2, "Invalid value for '--shape': must be three positive whole numbers"),
        (["--shape", "24,24,0"], 2, "got '24,24,0'"),
        (["--shape", "24,24,2.5"], 2, "got '24,24,2.5'"),
        (["--synthetic", "nope"], 2, "Invalid value for '--synthetic': 'nope' is not one of 'rods', 'brats-like'"),
        (["--shape", "24,24,8"], 1, "--shape) of the BratsLike task must be three sizes X,Y,Z, each >= 20"),
    ],
)
def test_cli_bad_values_give_one_line_errors(tmp_path, args, code, fragment):
    result = invoke("--synthetic", "brats-like", "--out", tmp_path / "prepared", *args)
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and fragment in errors[0], result.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_task_dir_with_synthetic_is_a_usage_error(make_msd_task, tmp_path):
    task = make_msd_task(tmp_path)
    result = invoke(task, "--synthetic", "brats-like", "--out", tmp_path / "prepared")
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "--synthetic brats-like generates a task, so it takes no TASK_DIR" in errors[0]
    assert str(task) in errors[0] and "Traceback" not in result.output
    assert not (tmp_path / "prepared").exists() and not (tmp_path / "Task90_BratsLike").exists()


def test_cli_help_lists_the_capacity_options():
    result = invoke("--help")
    assert result.exit_code == 0
    words = " ".join(result.output.split())  # help text is wrapped to the terminal width
    for text in ("--synthetic [rods|brats-like]", "--cases", "at least 3", "--shape X,Y,Z", "brats-like --cases 40"):
        assert text in words
