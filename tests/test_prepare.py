"""``prepare`` end to end on tiny tasks: output format, split, read-only input, atomic output, refusal and
``overwrite``, CT normalisation, median spacing, readers, and the ``PreparedDataset`` reading API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medseg_mem.core.prepare_config import PrepareConfig
from medseg_mem.data.prepare import prepare
from medseg_mem.data.prepared import FORMAT, PreparedDataset, make_split
from medseg_mem.core.errors import DatasetError, MedsegError


def run(task, out, **options):
    return prepare(PrepareConfig(task_dir=task, out_dir=out, **options), progress=False)


def test_prepares_a_3d_task(make_msd_task, tmp_path):
    task = make_msd_task(tmp_path, n_cases=5)
    summary = run(task, tmp_path / "out")
    assert summary.n_cases == 5 and summary.class_names == ("background", "left", "right")
    assert summary.min_shape == summary.max_shape == (8, 8, 6) and summary.split_sizes == (3, 1, 1)
    assert "prepared 5 cases of Tiny" in summary.line() and "shapes 8x8x6" in summary.line()
    arrays = {p.stem: np.load(p, allow_pickle=False) for p in (tmp_path / "out" / "cases" / "tiny_000").glob("*.npy")}
    assert sorted(arrays) == ["affine", "image", "label", "original_affine", "original_shape"]
    assert arrays["image"].shape == (1, 8, 8, 6) and arrays["image"].dtype == np.float32
    assert arrays["label"].shape == (1, 8, 8, 6) and arrays["label"].dtype == np.uint8
    assert arrays["affine"].shape == (4, 4) and arrays["affine"].dtype == np.float64
    assert arrays["original_affine"].shape == (4, 4)
    assert list(arrays["original_shape"]) == [8, 8, 6]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["format"] == FORMAT and manifest["source"] == str(task.resolve())
    assert manifest["class_names"] == ["background", "left", "right"] and manifest["in_channels"] == 1
    assert manifest["preprocessing"]["normalization"] == [{"scheme": "zscore_nonzero"}]
    first = manifest["cases"][0]
    assert first["id"] == "tiny_000" and first["image"] == "imagesTr/tiny_000.nii.gz"
    assert first["original_shape"] == first["prepared_shape"] == [8, 8, 6] and first["spacing"] == [1.0, 1.0, 1.0]


def test_prepares_a_4d_multimodal_task(make_msd_task, tmp_path):
    task = make_msd_task(tmp_path, n_cases=3, channels=4)
    run(task, tmp_path / "out")
    data = PreparedDataset.open(tmp_path / "out")
    assert data.in_channels == 4 and data.modalities == ["FLAIR", "T1w", "t1gd", "T2w"]
    case = data.load("tiny_001")
    assert case.image.shape == (4, 8, 8, 6) and case.label.shape == (1, 8, 8, 6)
    assert np.allclose(case.image.reshape(4, -1).mean(axis=1), 0, atol=1e-4)


def test_prepared_dataset_api(make_msd_task, tmp_path):
    run(make_msd_task(tmp_path, n_cases=10), tmp_path / "out")
    data = PreparedDataset.open(tmp_path / "out")
    assert (data.name, data.num_classes, len(data)) == ("Tiny", 3, 10)
    ids = data.ids("train") + data.ids("val") + data.ids("test")
    assert sorted(ids) == [f"tiny_{i:03d}" for i in range(10)]
    case = data.load(ids[0])
    assert case.case_id == ids[0] and set(np.unique(case.label)) <= {0, 1, 2}
    assert isinstance(case.image, np.memmap) and isinstance(case.label, np.memmap)  # streamed, not read whole
    assert not isinstance(data.load(ids[0], mmap=False).image, np.memmap)
    assert data.shape(ids[0]) == (8, 8, 6) and data.largest("train") in data.ids("train")
    with pytest.raises(MedsegError, match="split: unknown name 'training'; did you mean 'train'"):
        data.ids("training")
    with pytest.raises(MedsegError, match="case 'tiny_0001' is not in .*manifest.json; did you mean"):
        data.load("tiny_0001")


def test_open_reports_missing_or_malformed_folder(make_msd_task, tmp_path):
    with pytest.raises(DatasetError, match=r"nope: no prepared dataset here; run `medseg-mem prepare` first"):
        PreparedDataset.open(tmp_path / "nope")
    run(make_msd_task(tmp_path), tmp_path / "out")
    (tmp_path / "out" / "splits.json").write_text("{broken")
    with pytest.raises(MedsegError, match=r"out/splits.json: not valid JSON .*fix the syntax"):
        PreparedDataset.open(tmp_path / "out")
    (tmp_path / "out" / "splits.json").write_text('[{"train": ["ghost"], "val": [], "test": []}]')
    with pytest.raises(MedsegError, match=r"splits.json: 1 case id\(s\) are not cases of the dataset: ghost"):
        PreparedDataset.open(tmp_path / "out")
    (tmp_path / "out" / "splits.json").unlink()  # a folder prepared before splits.json: its split.json is read
    (tmp_path / "out" / "split.json").write_text('{"train": ["ghost"], "val": [], "test": []}')
    with pytest.raises(DatasetError, match=r"case id\(s\) ghost are not in manifest.json"):
        PreparedDataset.open(tmp_path / "out")
    (tmp_path / "out" / "manifest.json").unlink()
    with pytest.raises(DatasetError, match=r"manifest.json not found; run `medseg-mem prepare` first"):
        PreparedDataset.open(tmp_path / "out")


@pytest.mark.parametrize("n, sizes", [(10, (6, 2, 2)), (48, (28, 10, 10)), (260, (156, 52, 52)), (3, (1, 1, 1))])
def test_split_sizes_60_20_20(n, sizes):
    split = make_split([f"c{i}" for i in range(n)], seed=0)
    assert tuple(len(split[k]) for k in ("train", "val", "test")) == sizes
    assert sorted(split["train"] + split["val"] + split["test"]) == sorted(f"c{i}" for i in range(n))


def test_split_deterministic_and_independent_of_listing_order(make_msd_task, edit_json, tmp_path):
    task = make_msd_task(tmp_path, n_cases=10)
    run(task, tmp_path / "a", seed=7)
    training = json.loads((task / "dataset.json").read_text())["training"]
    edit_json(task, training=training[::-1])
    run(task, tmp_path / "b", seed=7)
    run(task, tmp_path / "c", seed=8)
    split = [json.loads((tmp_path / name / "splits.json").read_text())[0] for name in "abc"]
    assert split[0] == split[1] and PreparedDataset.open(tmp_path / "a").manifest["split"] == {"seed": 7}
    assert split[0]["test"] != split[2]["test"] or split[0]["val"] != split[2]["val"]
    assert make_split([f"c{i}" for i in range(10)], 7) == make_split([f"c{i}" for i in reversed(range(10))], 7)


def test_input_folder_is_never_written(make_msd_task, checksums, tmp_path):
    task = make_msd_task(tmp_path, n_cases=4)
    before = checksums(task)
    run(task, tmp_path / "out", crop_foreground=True, spacing="median")
    run(task, tmp_path / "out")
    assert checksums(task) == before


def test_failed_prepare_leaves_previous_output_untouched(make_msd_task, checksums, tmp_path):
    task = make_msd_task(tmp_path, n_cases=3)
    run(task, tmp_path / "out")
    before = checksums(tmp_path / "out")
    (task / "imagesTr" / "tiny_001.nii.gz").write_bytes(b"broken")
    with pytest.raises(DatasetError):
        run(task, tmp_path / "out")
    assert checksums(tmp_path / "out") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Task99_Tiny", "out"]  # no staging leftovers


def test_rerun_on_same_source_replaces_identically(make_msd_task, checksums, tmp_path):
    task = make_msd_task(tmp_path, n_cases=3)
    run(task, tmp_path / "out")
    first = checksums(tmp_path / "out")
    (tmp_path / "out" / "cases" / "stale.npz").write_bytes(b"old")
    run(task, tmp_path / "out")
    assert checksums(tmp_path / "out") == first


def test_foreign_output_refused_unless_overwrite(make_msd_task, tmp_path):
    task = make_msd_task(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.docx").write_text("precious")
    with pytest.raises(MedsegError, match=r"--out .*out: holds 1 other file\(s\) \(thesis.docx\); .*--overwrite"):
        run(task, out)
    assert (out / "thesis.docx").read_text() == "precious"
    run(task, out, overwrite=True)
    assert not (out / "thesis.docx").exists() and (out / "manifest.json").is_file()


def test_prepared_dataset_of_another_source_refused(make_msd_task, tmp_path):
    first = make_msd_task(tmp_path, name="Task98_One")
    second = make_msd_task(tmp_path, name="Task97_Two")
    run(first, tmp_path / "out")
    with pytest.raises(MedsegError, match="holds a prepared dataset of another source"):
        run(second, tmp_path / "out")
    run(second, tmp_path / "out", overwrite=True)
    assert PreparedDataset.open(tmp_path / "out").name == "Two"


def test_output_overlapping_the_input_is_refused_even_with_overwrite(make_msd_task, tmp_path):
    task = make_msd_task(tmp_path)
    for out in (task / "prepared", task, tmp_path):
        with pytest.raises(MedsegError, match="overlaps the task folder"):
            run(task, out, overwrite=True)


def test_ct_normalisation_uses_foreground_statistics(make_msd_task, write_nifti, tmp_path):
    task = make_msd_task(tmp_path, n_cases=3, modality={"0": "CT"})
    rng = np.random.default_rng(0)
    for index in range(3):
        label = np.zeros((8, 8, 6), np.uint8)
        label[2:6, 2:6, 1:5] = 1
        image = np.where(label > 0, rng.normal(60, 10, label.shape), -1000.0)
        if index == 0:
            image[3, 3, 2] = 5000.0  # an outlier, clipped by the 99.5 percentile
        write_nifti(image.astype(np.float32), task / "imagesTr" / f"tiny_{index:03d}.nii.gz")
        write_nifti(label, task / "labelsTr" / f"tiny_{index:03d}.nii.gz")
    run(task, tmp_path / "out")
    data = PreparedDataset.open(tmp_path / "out")
    stats = data.manifest["preprocessing"]["normalization"][0]
    assert stats["scheme"] == "ct" and 20 < stats["lower"] < 60 < stats["upper"] < 5000
    assert 50 < stats["mean"] < 120
    image = data.load("tiny_000").image[0]
    assert image.max() == pytest.approx((stats["upper"] - stats["mean"]) / stats["std"], rel=1e-5)
    assert image.min() == pytest.approx((stats["lower"] - stats["mean"]) / stats["std"], rel=1e-5)


def test_median_spacing_and_crop_foreground(make_msd_task, write_nifti, tmp_path):
    task = make_msd_task(tmp_path, n_cases=3)
    for index, z in enumerate((1.0, 2.0, 2.0)):
        affine = np.diag([1.0, 1.0, z, 1.0])
        for kind in ("imagesTr", "labelsTr"):
            path = task / kind / f"tiny_{index:03d}.nii.gz"
            write_nifti(np.asanyarray(__import__("nibabel").load(str(path)).dataobj), path, affine)
    run(task, tmp_path / "out", spacing="median", crop_foreground=True)
    manifest = PreparedDataset.open(tmp_path / "out").manifest
    assert manifest["preprocessing"]["spacing_rule"] == "median"
    assert manifest["preprocessing"]["spacing"] == [1.0, 1.0, 2.0]
    shapes = {c["id"]: (c["spacing"], c["prepared_shape"], c["prepared_spacing"]) for c in manifest["cases"]}
    assert shapes["tiny_000"] == ([1.0, 1.0, 1.0], [8, 8, 4], [1.0, 1.0, 2.0])
    assert shapes["tiny_001"][1] == [8, 8, 6]


SWIG_IMPORT_WARNINGS = "ignore:builtin type [Ss]wig.* has no __module__ attribute:DeprecationWarning"


@pytest.mark.filterwarnings(SWIG_IMPORT_WARNINGS)
def test_itk_reader_gives_the_same_arrays(make_msd_task, tmp_path):
    task = make_msd_task(tmp_path, n_cases=2, channels=4)
    run(task, tmp_path / "nib")
    run(task, tmp_path / "itk", reader="itk")
    for case_id in ("tiny_000", "tiny_001"):
        a = PreparedDataset.open(tmp_path / "nib").load(case_id)
        b = PreparedDataset.open(tmp_path / "itk").load(case_id)
        np.testing.assert_allclose(a.image, b.image, atol=1e-5)
        np.testing.assert_array_equal(a.label, b.label)
        np.testing.assert_allclose(a.affine, b.affine, atol=1e-6)


def test_embedded_default_is_written_beside_the_output(tmp_path, monkeypatch):
    from medseg_mem.data import prepare as prepare_module

    real = prepare_module.write_default_task
    monkeypatch.setattr(prepare_module, "write_default_task", lambda dest, seed: real(dest, seed, n_cases=6))
    summary = prepare(PrepareConfig(task_dir=None, out_dir=tmp_path / "work" / "prepared"), progress=False)
    assert summary.task_dir == tmp_path / "work" / "Task00_SyntheticRods"
    assert (summary.task_dir / "dataset.json").is_file() and summary.n_cases == 6
    assert Path(PreparedDataset.open(tmp_path / "work" / "prepared").manifest["source"]) == summary.task_dir.resolve()
    prepare(PrepareConfig(task_dir=None, out_dir=tmp_path / "work" / "prepared"), progress=False)  # again: fine


def test_old_format_gets_one_line_to_prepare_again(make_msd_task, tmp_path):
    task = make_msd_task(tmp_path, n_cases=3)
    run(task, tmp_path / "out")
    manifest_path = tmp_path / "out" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "format": "medseg-mem-prepared/1"}))
    with pytest.raises(DatasetError) as raised:
        PreparedDataset.open(tmp_path / "out")
    message = str(raised.value)
    assert "\n" not in message and "older medseg-mem" in message
    assert f"medseg-mem prepare {task.resolve()}" in message and "--overwrite" in message
