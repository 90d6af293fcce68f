"""The embedded default task SyntheticRods: layout, determinism, rod geometry and intensities."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medseg_mem.data import PreparedDataset, synthetic
from medseg_mem.data.synthetic import make_case, write_default_task
from medseg_mem.core.errors import MedsegError


def load(path):
    import nibabel as nib

    image = nib.load(str(path))
    return np.asanyarray(image.dataobj), image


def rod_geometry(label: np.ndarray, value: int):
    """(length in slices, first slice, cross-section mask) of the rod with label ``value``."""
    mask = label == value
    slices = np.flatnonzero(mask.any(axis=(0, 1)))
    assert np.all(np.diff(slices) == 1), "a rod is one contiguous run of slices"
    sections = {mask[:, :, z].tobytes() for z in slices}
    assert len(sections) == 1, "the cross-section is constant along the rod"
    return len(slices), int(slices[0]), mask[:, :, slices[0]]


def test_writes_an_msd_task(tmp_path):
    task = write_default_task(tmp_path / synthetic.TASK_FOLDER, seed=0, n_cases=3)
    meta = json.loads((task / "dataset.json").read_text())
    assert meta["name"] == "SyntheticRods" and meta["modality"] == {"0": "MRI"}
    assert meta["labels"] == {"0": "background", "1": "long_rod", "2": "short_rod"}
    assert meta["numTraining"] == 3 and len(meta["training"]) == 3
    image, header = load(task / meta["training"][0]["image"])
    label, _ = load(task / meta["training"][0]["label"])
    assert image.shape == (32, 32, 96) and image.dtype == np.float32
    assert label.shape == (32, 32, 96) and label.dtype == np.uint8
    np.testing.assert_array_equal(header.affine, np.eye(4))
    assert sorted(p.name for p in task.iterdir()) == ["dataset.json", "imagesTr", "labelsTr"]


def test_same_seed_gives_identical_bytes(tmp_path):
    first = write_default_task(tmp_path / "a", seed=3, n_cases=2)
    second = write_default_task(tmp_path / "b", seed=3, n_cases=2)
    other = write_default_task(tmp_path / "c", seed=4, n_cases=2)
    for name in ("imagesTr/rods_001.nii.gz", "labelsTr/rods_001.nii.gz", "dataset.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    np.testing.assert_array_equal(load(first / "imagesTr/rods_000.nii.gz")[0], make_case(3, 0)[0])
    assert (first / "imagesTr/rods_000.nii.gz").read_bytes() != (other / "imagesTr/rods_000.nii.gz").read_bytes()


@pytest.mark.parametrize("index", range(12))
def test_rods_have_declared_lengths_and_identical_radius(index):
    image, label = make_case(seed=0, index=index)
    assert sorted(np.unique(label)) == [0, 1, 2]
    long_len, long_start, long_section = rod_geometry(label, 1)
    short_len, short_start, short_section = rod_geometry(label, 2)
    assert 48 <= long_len <= 72 and 17 <= short_len <= 22
    for start, length in ((long_start, long_len), (short_start, short_len)):
        assert 2 <= start and start + length <= 94
    # identical cross-section: the two disks are translates of each other, of radius 3..4 voxels
    assert long_section.sum() == short_section.sum()
    assert 25 <= long_section.sum() <= 53  # voxelised disks of radius 3.0 .. 4.0
    crop = [m[np.ix_(m.any(1), m.any(0))] for m in (long_section, short_section)]
    np.testing.assert_array_equal(crop[0], crop[1])
    # non-overlapping with a gap, away from the border
    a, b = np.argwhere(long_section), np.argwhere(short_section)
    assert np.min(np.linalg.norm(a[:, None] - b[None], axis=-1)) >= 2
    both = long_section | short_section
    assert not (both[0].any() or both[-1].any() or both[:, 0].any() or both[:, -1].any())


def test_intensities_identical_statistics_with_case_specific_scale():
    scales = []
    for index in range(6):
        image, label = make_case(seed=0, index=index)
        background = image[label == 0]
        long_rod, short_rod = image[label == 1], image[label == 2]
        scale = background.mean() / 100.0
        assert 0.45 < scale < 3.1
        assert long_rod.mean() - background.mean() == pytest.approx(80 * scale, rel=0.05)
        assert short_rod.mean() == pytest.approx(long_rod.mean(), rel=0.02)
        assert short_rod.std() == pytest.approx(long_rod.std(), rel=0.15)
        scales.append(scale)
    assert max(scales) / min(scales) > 1.5, "the scale varies between cases, so normalisation matters"


def test_rewrite_replaces_and_foreign_folder_is_refused(tmp_path):
    dest = tmp_path / synthetic.TASK_FOLDER
    write_default_task(dest, seed=0, n_cases=2)
    write_default_task(dest, seed=0, n_cases=1)
    assert sorted(p.name for p in (dest / "imagesTr").iterdir()) == ["rods_000.nii.gz"]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(MedsegError, match="holds something other than the generated SyntheticRods task"):
        write_default_task(foreign, n_cases=1)
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(MedsegError, match="--shape .*: the SyntheticRods task needs"):
        write_default_task(tmp_path / "t", shape=(32, 32, 40))
    with pytest.raises(MedsegError, match=r"n_cases \(--cases\) must be >= 1"):
        write_default_task(tmp_path / "t", n_cases=0)


def test_prepared_default(prepared_default):
    data = PreparedDataset.open(prepared_default)
    assert data.name == "SyntheticRods" and data.class_names == ["background", "long_rod", "short_rod"]
    assert data.num_classes == 3 and data.in_channels == 1 and data.modalities == ["MRI"]
    assert [len(data.ids(s)) for s in ("train", "val", "test")] == [8, 2, 2]
    case = data.load(data.ids("val")[0])
    assert case.image.shape == (1, 32, 32, 96) and case.image.dtype == np.float32
    assert case.label.shape == (1, 32, 32, 96) and case.label.dtype == np.uint8
    assert abs(float(case.image.mean())) < 1e-3 and abs(float(case.image.std()) - 1) < 1e-3
