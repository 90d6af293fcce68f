"""The MONAI preprocessing pipeline built from plain JSON settings: normalisation rules, spacing,
orientation, cropping, and invertibility for the later ``predict``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medseg_mem.data import transforms
from medseg_mem.data.transforms import build_preprocessing, make_settings
from medseg_mem.core.errors import MedsegError

CT_STATS = {"scheme": "ct", "lower": -100.0, "upper": 300.0, "mean": 50.0, "std": 80.0}


def case_files(tmp_path, write_nifti, image, label=None, affine=None):
    label = np.zeros(image.shape[:3], np.uint8) if label is None else label
    return {
        "image": str(write_nifti(image.astype(np.float32), tmp_path / "img.nii.gz", affine)),
        "label": str(write_nifti(label, tmp_path / "lab.nii.gz", affine)),
    }


def test_settings_are_plain_json_and_rebuild_identically(tmp_path, write_nifti):
    settings = make_settings(["MRI"], spacing=(1.0, 1.0, 2.0), crop_foreground=True)
    restored = json.loads(json.dumps(settings))
    files = case_files(tmp_path, write_nifti, np.random.default_rng(0).uniform(1, 5, (8, 8, 6)))
    first = build_preprocessing(settings)(dict(files))
    second = build_preprocessing(restored)(dict(files))
    np.testing.assert_array_equal(first["image"].numpy(), second["image"].numpy())
    assert restored["spacing_rule"] == "fixed" and restored["spacing"] == [1.0, 1.0, 2.0]


def test_mri_channels_z_scored_over_nonzero_voxels(tmp_path, write_nifti):
    rng = np.random.default_rng(0)
    image = rng.normal(0, 1, (8, 8, 6, 4)) * [1, 10, 100, 1000] + [5, 50, 500, 5000]
    image[0] = 0  # background stays zero
    out = build_preprocessing(make_settings(["FLAIR", "T1w", "t1gd", "T2w"]))(
        case_files(tmp_path, write_nifti, image)
    )["image"].numpy()
    assert out.shape == (4, 8, 8, 6) and out.dtype == np.float32
    for channel in out:
        inside = channel[1:]
        assert abs(inside.mean()) < 1e-4 and abs(inside.std() - 1) < 1e-3
        assert np.all(channel[0] == 0)


def test_ct_clip_then_z_score_with_dataset_statistics(tmp_path, write_nifti):
    settings = make_settings(["CT"])
    settings["normalization"] = [dict(CT_STATS)]
    image = np.linspace(-1000, 2000, 8 * 8 * 6).reshape(8, 8, 6)
    out = build_preprocessing(settings)(case_files(tmp_path, write_nifti, image))["image"].numpy()[0]
    expected = (np.clip(image, -100, 300) - 50) / 80
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_mixed_ct_and_mri_channels_normalised_per_channel(tmp_path, write_nifti):
    settings = make_settings(["CT", "PET"])
    settings["normalization"][0] = dict(CT_STATS)
    rng = np.random.default_rng(1)
    image = np.stack([rng.uniform(-500, 800, (8, 8, 6)), rng.uniform(10, 20, (8, 8, 6))], axis=-1)
    pipeline = build_preprocessing(settings)
    assert any(isinstance(t, transforms.PerChannelIntensityd) for t in pipeline.transforms)
    out = pipeline(case_files(tmp_path, write_nifti, image))["image"].numpy()
    np.testing.assert_allclose(out[0], (np.clip(image[..., 0], -100, 300) - 50) / 80, atol=1e-5)
    assert abs(out[1].mean()) < 1e-4 and abs(out[1].std() - 1) < 1e-3


def test_ct_statistics_follow_nnunet():
    samples = [np.arange(0, 1000, dtype=float), np.arange(1000, 2001, dtype=float)]
    stats = transforms.ct_statistics(samples)
    values = np.concatenate(samples)
    assert stats["lower"] == pytest.approx(np.percentile(values, 0.5))
    assert stats["upper"] == pytest.approx(np.percentile(values, 99.5))
    assert stats["mean"] == pytest.approx(values.mean()) and stats["std"] == pytest.approx(values.std())
    assert transforms.ct_statistics([]) is None


def test_foreground_sample_is_capped_and_deterministic():
    channel = np.arange(100000, dtype=np.float32).reshape(100, 100, 10)
    label = np.ones_like(channel)
    sample = transforms.foreground_sample(channel, label)
    assert sample.size == transforms.SAMPLES_PER_CASE
    np.testing.assert_array_equal(sample, transforms.foreground_sample(channel, label))
    assert transforms.foreground_sample(channel, np.zeros_like(channel)).size == 0


def test_missing_ct_statistics_are_refused():
    with pytest.raises(MedsegError, match="channel 0 is CT but its dataset statistics are missing"):
        build_preprocessing(make_settings(["CT"]))
    with pytest.raises(MedsegError, match="median spacing has not been computed"):
        build_preprocessing(make_settings(["MRI"], spacing="median"))
    with pytest.raises(MedsegError, match="missing key"):
        build_preprocessing({"reader": "nibabel"})


def test_spacing_resamples_image_bilinear_and_label_nearest(tmp_path, write_nifti):
    label = np.zeros((8, 8, 6), np.uint8)
    label[2:6, 2:6, 1:5] = 2
    files = case_files(tmp_path, write_nifti, np.ones((8, 8, 6)) * 3, label)
    out = build_preprocessing(make_settings(["MRI"], spacing=(1.0, 1.0, 2.0)))(files)
    assert tuple(out["image"].shape[1:]) == (8, 8, 4)  # 6 voxels of 1 mm span 5 mm: ceil(5 / 2) + 1
    assert out["label"].dtype.is_floating_point is False
    assert set(np.unique(out["label"].numpy())) <= {0, 2}
    assert np.asarray(out["image"].affine)[2, 2] == pytest.approx(2.0)


def test_orientation_to_ras(tmp_path, write_nifti):
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    image = np.arange(8 * 8 * 6, dtype=float).reshape(8, 8, 6) + 1
    out = build_preprocessing(make_settings(["MRI"]))(case_files(tmp_path, write_nifti, image, affine=lps))
    assert np.all(np.diag(np.asarray(out["image"].affine))[:3] > 0)
    assert out["image"].meta["original_affine"][0, 0] == -1


def test_ras_spacing_follows_orientation():
    affine = np.array([[0, 0, 2.0, 0], [3.0, 0, 0, 0], [0, 1.5, 0, 0], [0, 0, 0, 1]])
    assert transforms.ras_spacing(affine) == [2.0, 3.0, 1.5]
    assert transforms.median_spacing([[1, 1, 3], [1, 2, 5], [1, 1, 4]]) == [1.0, 1.0, 4.0]


def test_crop_foreground_to_nonzero_voxels(tmp_path, write_nifti):
    image = np.zeros((8, 8, 6))
    image[2:5, 1:7, 2:4] = 7
    out = build_preprocessing(make_settings(["MRI"], crop_foreground=True))(case_files(tmp_path, write_nifti, image))
    assert tuple(out["image"].shape) == (1, 3, 6, 2) and tuple(out["label"].shape) == (1, 3, 6, 2)


def test_image_only_pipeline_and_inversion_back_to_original_grid(tmp_path, write_nifti):
    from monai.transforms import Invertd

    image = np.zeros((8, 8, 6))
    image[1:7, 2:6, 1:5] = np.random.default_rng(0).uniform(1, 2, (6, 4, 4))
    files = case_files(tmp_path, write_nifti, image, affine=np.diag([-1.0, 1.0, 1.5, 1.0]))
    pipeline = build_preprocessing(make_settings(["MRI"], spacing=(1.0, 1.0, 1.0), crop_foreground=True), False)
    data = pipeline({"image": files["image"]})
    assert set(data) >= {"image"} and "label" not in data
    data["pred"] = (data["image"] > 0).float()
    restored = Invertd("pred", transform=pipeline, orig_keys="image", nearest_interp=True)(data)
    assert tuple(restored["pred"].shape) == (1, 8, 8, 6)
    np.testing.assert_allclose(np.asarray(restored["pred"].affine), np.diag([-1.0, 1.0, 1.5, 1.0]), atol=1e-5)


@pytest.mark.parametrize("modalities", [["CT"], ["CT", "PET"]])
def test_ct_normalised_in_place_equals_monai_whole_image_transform_bit_for_bit(tmp_path, write_nifti, monkeypatch,
                                                                               modalities):  # fmt: skip
    import torch
    from monai.transforms import ScaleIntensityRange

    from medseg_mem.data import normalize

    settings = make_settings(modalities)
    settings["normalization"][0] = dict(CT_STATS)
    image = np.random.default_rng(2).uniform(-1000, 2000, (40, 30, 70, len(modalities))).astype(np.float32)
    monkeypatch.setattr(normalize, "CHUNK_VOXELS", 40 * 30 * 8)  # nine slabs of 8 slices, the last of 6
    files = case_files(tmp_path, write_nifti, image[..., 0] if len(modalities) == 1 else image)
    out = build_preprocessing(settings)(files)["image"].as_tensor()
    whole = ScaleIntensityRange(clip=True, **transforms.ct_range(CT_STATS))(torch.as_tensor(image[..., 0]))
    assert torch.equal(out[0], torch.as_tensor(whole))
