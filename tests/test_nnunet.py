"""nnU-Net v2 datasets read as they are (one file per channel), prepared bit for bit like their MSD twins; the
split as an editable splits.json, and --splits; bad input as one line naming the file or option."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from medseg_mem.cli import main
from medseg_mem.data import PreparedDataset, read_task
from medseg_mem.data.prepare import prepare
from medseg_mem.core.errors import DatasetError, MedsegError
from medseg_mem.core.prepare_config import PrepareConfig

LABELS = {"background": 0, "left": 1, "right": 2}


@pytest.fixture
def nnunet_twin(write_nifti):
    """Factory ``nnunet_twin(msd_task, root, channel_names=None, ending=".nii.gz") -> folder``."""
    return lambda *args, **kwargs: twin_of(write_nifti, *args, **kwargs)


def twin_of(save_nifti, msd_task: Path, root: Path, channel_names=None, ending=".nii.gz") -> Path:
    """The MSD task ``msd_task`` (3D, or 4D channel-last images) laid out as nnU-Net v2's ``Dataset042_Twin``."""
    meta = json.loads((msd_task / "dataset.json").read_text())
    folder = Path(root) / "Dataset042_Twin"
    for entry in meta["training"]:
        image = nib.load(str(msd_task / entry["image"]))
        case = Path(entry["image"]).name[: -len(".nii.gz")]
        data = np.asarray(image.dataobj)
        data = data[..., None] if data.ndim == 3 else data
        for channel in range(data.shape[-1]):
            save_nifti(np.ascontiguousarray(data[..., channel]), folder / "imagesTr" / f"{case}_{channel:04d}{ending}",
                       image.affine)  # fmt: skip
        label = nib.load(str(msd_task / entry["label"]))
        save_nifti(np.asarray(label.dataobj), folder / "labelsTr" / f"{case}{ending}", label.affine)
    (folder / "imagesTr" / ".DS_Store").write_bytes(b"junk")  # never taken for a case
    channel_names = channel_names or meta["modality"]
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": channel_names, "labels": LABELS, "numTraining": len(meta["training"]), "file_ending": ending,
    }))  # fmt: skip
    return folder


def prepared_arrays(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): np.load(p) for p in sorted((folder / "cases").rglob("*.npy"))}


@pytest.mark.parametrize("modality, options", [
    ({"0": "MRI", "1": "MRI"}, {}),
    ({"0": "CT", "1": "T2"}, {"spacing": "median", "crop_foreground": True}),  # CT statistics: the survey reads too
])  # fmt: skip
def test_a_two_channel_nnunet_dataset_prepares_to_the_arrays_of_its_msd_twin(make_msd_task, nnunet_twin, tmp_path,
                                                                               modality, options):  # fmt: skip
    affine = np.diag([1.5, -2.0, 3.0, 1.0])
    msd = make_msd_task(tmp_path / "msd", n_cases=5, shape=(8, 9, 6), channels=2, modality=modality, affine=affine)
    twin = nnunet_twin(msd, tmp_path / "raw", channel_names=modality)
    a = prepare(PrepareConfig(task_dir=msd, out_dir=tmp_path / "a", **options), progress=False)
    b = prepare(PrepareConfig(task_dir=twin, out_dir=tmp_path / "b", **options), progress=False)
    assert b.name == "Twin" and b.in_channels == 2 and b.class_names == a.class_names
    arrays, twins = prepared_arrays(tmp_path / "a"), prepared_arrays(tmp_path / "b")
    assert sorted(arrays) == sorted(twins) and len(arrays) == 5 * 5
    for name, array in arrays.items():
        assert array.dtype == twins[name].dtype and np.array_equal(array, twins[name]), name  # bit for bit
    manifests = [json.loads((tmp_path / x / "manifest.json").read_text()) for x in "ab"]
    assert manifests[0]["preprocessing"] == manifests[1]["preprocessing"] and manifests[1]["layout"] == "nnunet-v2"
    assert manifests[1]["cases"][0]["image"] == "imagesTr/tiny_000_{0000,0001}.nii.gz"
    assert (tmp_path / "a" / "splits.json").read_text() == (tmp_path / "b" / "splits.json").read_text()


def test_a_one_channel_nii_dataset_is_read_with_its_ending(make_msd_task, nnunet_twin, tmp_path):
    msd = make_msd_task(tmp_path / "msd", n_cases=3)
    folder = nnunet_twin(msd, tmp_path / "raw", ending=".nii")
    task = read_task(folder)
    assert task.layout == "nnunet-v2" and [c.case_id for c in task.cases] == ["tiny_000", "tiny_001", "tiny_002"]
    assert task.cases[0].image_rel == "imagesTr/tiny_000_0000.nii" and task.modalities == ["MRI"]
    meta = json.loads((folder / "dataset.json").read_text())
    (folder / "dataset.json").write_text(json.dumps({**meta, "numTraining": 7}))
    notes = []
    prepare(PrepareConfig(task_dir=folder, out_dir=tmp_path / "out"), progress=False, warn=notes.append)
    assert any("numTraining says 7 but imagesTr/ holds 3 case(s); the 3 found are prepared" in n for n in notes)


@pytest.fixture
def broken(make_msd_task, nnunet_twin, tmp_path):
    """Factory ``broken(**changes) -> folder``: a 3-case 2-channel twin with ``dataset.json`` keys changed."""
    return lambda **changes: changed(nnunet_twin(make_msd_task(tmp_path / "msd", n_cases=3, channels=2),
                                                 tmp_path / "raw"), changes)  # fmt: skip


def changed(folder: Path, changes: dict) -> Path:
    meta = json.loads((folder / "dataset.json").read_text())
    (folder / "dataset.json").write_text(json.dumps({**meta, **changes}))
    return folder


@pytest.mark.parametrize("changes, says", [
    ({"labels": {"background": 0, "whole tumour": [1, 2], "core": 2}, "regions_class_order": [1, 2]},
     "'labels' 'whole tumour' map to lists of labels (nnU-Net's region-based training)"),
    ({"labels": {"background": 0, "left": 1, "ignore": 2}}, "'labels' has an 'ignore' label"),
    ({"labels": {"background": 0, "left": 2}}, "'labels' values must be 0, 1, ..., 1; got [0, 2]"),
    ({"file_ending": ".mha"}, "'file_ending' is '.mha'; medseg-mem reads NIfTI only"),
    ({"dataset": {"case": {}}}, "a 'dataset' key listing files elsewhere is not read"),
])  # fmt: skip
def test_unsupported_dataset_json_is_refused_in_one_line(broken, tmp_path, changes, says):
    folder = broken(**changes)
    result = CliRunner().invoke(main, ["prepare", str(folder), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0 and f"{folder}: dataset.json: {says}" in result.output
    assert not (tmp_path / "out").exists()


def test_missing_misnamed_and_mismatched_files_are_each_named(broken):
    folder = broken()
    (folder / "imagesTr" / "tiny_001_0001.nii.gz").unlink()
    (folder / "labelsTr" / "tiny_002.nii.gz").rename(folder / "labelsTr" / "tiny_009.nii.gz")
    (folder / "imagesTr" / "notes.nii.gz").write_bytes(b"")
    (folder / "imagesTr" / "tiny_000_0002.nii.gz").write_bytes(b"")
    with pytest.raises(DatasetError) as error:
        read_task(folder)
    assert sorted(error.value.problems) == sorted([
        "imagesTr/notes.nii.gz: not named <case>_XXXX.nii.gz (XXXX: the channel, 0000 for the first); rename it",
        "imagesTr/tiny_000_0002.nii.gz: channel 2, but dataset.json 'channel_names' declares 2; declare it or "
        "remove the file",
        "labelsTr/tiny_009.nii.gz: has no image (imagesTr/tiny_009_0000.nii.gz); add it or remove the label",
        "imagesTr/tiny_001_0001.nii.gz: file not found; case tiny_001 needs one file per channel of "
        "'channel_names' (2)",
        "labelsTr/tiny_002.nii.gz: file not found for the image imagesTr/tiny_002_0000.nii.gz; add the label or "
        "remove the case's images",
    ])  # fmt: skip


def test_channel_files_of_different_grids_are_named_before_reading(broken, write_nifti, tmp_path):
    folder = broken()
    write_nifti(np.ones((8, 8, 5), np.float32), folder / "imagesTr" / "tiny_001_0001.nii.gz")
    write_nifti(np.ones((8, 8, 6), np.float32), folder / "imagesTr" / "tiny_002_0001.nii.gz", np.diag([2, 1, 1, 1]))
    with pytest.raises(DatasetError) as error:
        prepare(PrepareConfig(task_dir=folder, out_dir=tmp_path / "out"), progress=False)
    assert error.value.problems == [
        "imagesTr/tiny_001_0001.nii.gz: shape 8x8x5 differs from imagesTr/tiny_001_0000.nii.gz 8x8x6; every "
        "channel of a case must share one voxel grid",
        "imagesTr/tiny_002_0001.nii.gz: affine differs from imagesTr/tiny_002_0000.nii.gz's; every channel of a "
        "case must share one voxel grid (resample it onto the first channel)",
    ]  # fmt: skip


def write_splits(path: Path, content) -> Path:
    path.write_text(json.dumps(content))
    return path


def test_prepare_takes_a_users_splits_file_and_training_reads_an_edited_one(make_msd_task, tmp_path):
    task = make_msd_task(tmp_path, n_cases=6)
    mine = write_splits(tmp_path / "mine.json", [{"train": ["tiny_000", "tiny_001", "tiny_002"], "val": ["tiny_003"],
                                                  "test": ["tiny_004"]}])  # fmt: skip
    notes = []
    summary = prepare(PrepareConfig(task_dir=task, out_dir=tmp_path / "out", splits=mine), False, notes.append)
    assert summary.split_sizes == (3, 1, 1) and any("puts 1 case(s) in no split (tiny_005)" in n for n in notes)
    data = PreparedDataset.open(tmp_path / "out")
    assert data.ids("test") == ["tiny_004"] and len(data) == 6 and data.manifest["split"] == {"file": str(mine)}
    write_splits(tmp_path / "out" / "splits.json", [{"train": ["tiny_000"], "val": ["tiny_005"], "test": []}])
    assert PreparedDataset.open(tmp_path / "out").ids("val") == ["tiny_005"]  # the edited file is the split
    write_splits(tmp_path / "out" / "splits.json", [{"train": ["tiny_000"], "val": ["tiny_000"], "test": []}])
    result = CliRunner().invoke(main, ["run", "--data", str(tmp_path / "out"), "--results", str(tmp_path / "r.csv")])
    assert result.exit_code == 1 and result.output.strip().count("\n") == 0
    assert f"{tmp_path / 'out' / 'splits.json'}: case 'tiny_000' is in both train and val" in result.output


@pytest.mark.parametrize("content, says", [
    ([{"train": ["tiny_000", "tiny_x"], "val": ["tiny_001"], "test": ["tiny_002"]}],
     "1 case id(s) are not cases of the dataset: tiny_x (did you mean"),
    ([{"train": ["tiny_000"], "val": ["tiny_001"], "test": ["tiny_000"]}],
     "case 'tiny_000' is in both train and test; each case belongs to one split at most"),
    ([{"train": ["tiny_000", "tiny_000"], "val": ["tiny_001"], "test": ["tiny_002"]}],
     "case 'tiny_000' is twice in train"),
    ([{"train": ["tiny_000"], "val": [], "test": ["tiny_002"]}], "the val split(s) are empty"),
    ([{"train": ["tiny_000"], "val": ["tiny_001"]}],
     "the fold has no 'test' list (nnU-Net's splits_final.json has none"),
    ([{"train": [], "val": []}] * 5, "holds 5 folds; expected a list holding one fold"),
    ([{"train": "tiny_000", "val": ["tiny_001"], "test": ["tiny_002"]}], "'train' must be a list of case ids"),
    ("{broken", "not valid JSON"),
])  # fmt: skip
def test_a_bad_splits_file_is_one_line_naming_the_option(make_msd_task, tmp_path, content, says):
    task = make_msd_task(tmp_path, n_cases=3)
    path = tmp_path / "bad.json"
    path.write_text(content) if isinstance(content, str) else write_splits(path, content)
    result = CliRunner().invoke(main, ["prepare", str(task), "--out", str(tmp_path / "out"), "--splits", str(path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0 and f"Error: --splits {path}: {says}" in result.output
    assert not (tmp_path / "out").exists()


def test_a_missing_splits_file_names_the_option(make_msd_task, tmp_path):
    with pytest.raises(MedsegError, match=r"--splits .*nope.json: file not found; pass a splits file like"):
        prepare(PrepareConfig(task_dir=make_msd_task(tmp_path), out_dir=tmp_path / "o", splits=tmp_path / "nope.json"))
