"""The out-of-core engine's slabs equal the in-memory MONAI pipeline voxel for voxel (3D and 4D, tilted, oblique,
flipped and permuted axes, anisotropic, with and without ``--spacing`` and ``--crop-foreground``, MRI and CT),
read only slabs and their halo, and build the cascade's downsampled volume to float32 rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from streaming_scans import in_memory, random_affine, settings_for, streamed, write_scan
from torch.nn import functional as F

import medseg_mem.data.streaming.preprocess as preprocess_module
from medseg_mem.data.streaming.geometry import spacing_geometry
from medseg_mem.data.streaming.preprocess import stream_scan
from medseg_mem.data.streaming.source import ScanFile
from medseg_mem.core.errors import MedsegError

CASES = [  # modalities, spacing, crop, compressed
    (["MRI"], None, False, False),
    (["CT"], None, True, True),
    (["MRI"], (1.1, 0.9, 1.7), False, True),
    (["CT"], (0.8, 1.3, 2.1), True, False),
    (["MRI"], (1.2, 1.2, 0.7), True, False),
    (["MRI", "MRI"], None, True, False),
    (["CT", "MRI"], (1.1, 0.9, 1.4), False, True),
    (["MRI", "MRI"], (0.9, 1.6, 1.0), True, True),
]


@pytest.mark.parametrize("modalities,spacing,crop,compressed", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_slabs_equal_the_in_memory_pipeline(tmp_path, modalities, spacing, crop, compressed, seed):
    rng = np.random.default_rng(seed)
    path = tmp_path / f"scan.nii{'.gz' if compressed else ''}"
    write_scan(path, rng, tuple(int(s) for s in rng.integers(9, 17, 3)), channels=len(modalities))
    settings = settings_for(modalities, spacing, crop)
    whole = in_memory(path, settings)
    with stream_scan(path, settings) as stream:
        assert stream.shape == tuple(whole.shape)
        assert np.array_equal(stream.affine, whole.affine.numpy())
        for depth in (1, 3, 7):
            assert torch.equal(streamed(stream, depth), whole.as_tensor())


@pytest.mark.parametrize("spacing", [None, (1.3, 0.8, 1.1)])
def test_oblique_float_scan_equals_the_in_memory_pipeline(tmp_path, spacing):
    """A freely rotated grid (45 degrees and more: not near any axis) of float voxels."""
    rng = np.random.default_rng(7)
    affine = random_affine(rng, tilt=60.0)
    path = write_scan(tmp_path / "oblique.nii", rng, (14, 11, 13), scaled=False, affine=affine)
    settings = settings_for(["MRI"], spacing)
    with stream_scan(path, settings) as stream:
        assert torch.equal(streamed(stream, 4), in_memory(path, settings).as_tensor())


def test_spacing_of_the_scan_itself_is_not_resampled(tmp_path):
    """MONAI keeps an image whose grid is already the target (AFFINE_TOL); so does the stream."""
    affine = np.diag([1.5, 0.8, 2.0, 1.0])
    path = write_scan(tmp_path / "native.nii", np.random.default_rng(2), (10, 12, 9), affine=affine)
    settings = settings_for(["MRI"], (1.5, 0.8, 2.0))
    with stream_scan(path, settings) as stream:
        assert stream.resampling is None
        assert torch.equal(streamed(stream, 4), in_memory(path, settings).as_tensor())


def test_geometry_is_monai_spacing(tmp_path):
    """Output shape and affine of a tilted, anisotropic grid are those ``Spacingd`` tracks."""
    rng = np.random.default_rng(4)
    path = write_scan(tmp_path / "tilted.nii", rng, (13, 9, 16))
    settings = settings_for(["MRI"], (0.7, 1.9, 1.2))
    whole = in_memory(path, settings)
    with stream_scan(path, settings) as stream:
        geometry = spacing_geometry(stream.orientation.affine, stream.orientation.shape, (0.7, 1.9, 1.2))
        assert geometry.out_shape == tuple(whole.shape[1:])
        assert np.array_equal(geometry.affine, whole.affine.numpy())


def test_slabs_read_only_their_slices_and_halo(tmp_path, monkeypatch):
    """After the survey, every read of the file is one slab plus the interpolation's halo, never the volume."""
    monkeypatch.setattr(preprocess_module, "SLAB_BYTES", 4 * 20 * 20 * 2)  # the survey too: 2 slices at a time
    path = write_scan(tmp_path / "long.nii", np.random.default_rng(5), (20, 20, 60), affine=np.diag([1, 1, 1.0, 1]))
    reads = []
    real_read = ScanFile.read

    def recording(self, axis, start, stop):
        reads.append(stop - start)
        return real_read(self, axis, start, stop)

    monkeypatch.setattr(ScanFile, "read", recording)
    with stream_scan(path, settings_for(["MRI"], (1.0, 1.0, 0.75))) as stream:
        survey, reads[:] = list(reads), []
        for _ in stream.slabs(4):
            pass
    assert max(survey) <= 2 + 4  # 2 slices at a time, plus the halo in the resampled pass
    assert 0 < max(reads) <= 4 * 0.75 + 4  # a slab of 4 output slices covers 3 input slices; the halo adds <= 4


@pytest.mark.parametrize("factor", [0.3, 0.5])
def test_downsampled_volume_equals_downsampling_the_whole_to_rounding(tmp_path, factor):
    rng = np.random.default_rng(6)
    path = write_scan(tmp_path / "scan.nii.gz", rng, (16, 14, 30), channels=2)
    settings = settings_for(["CT", "MRI"], (1.0, 1.0, 1.2))
    whole = in_memory(path, settings).as_tensor()
    size = tuple(max(1, int(round(s * factor))) for s in whole.shape[1:])
    reference = F.interpolate(whole[None], size=size, mode="trilinear", align_corners=False)[0]
    with stream_scan(path, settings) as stream:
        low = stream.downsampled(size, depth=5)
    assert low.shape == reference.shape
    assert float((low - reference).abs().max()) < 1e-5  # fused vs separate multiply-adds: a few float32 ulps


def test_crop_of_an_empty_scan_is_refused(tmp_path):
    path = tmp_path / "empty.nii"
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((6, 6, 6), np.float32), np.eye(4)), str(path))
    with pytest.raises(MedsegError, match="empty.nii: no nonzero voxels left after --crop-foreground"):
        stream_scan(path, settings_for(["MRI"], crop=True))


def test_non_finite_voxels_are_refused_with_their_slices(tmp_path):
    import nibabel as nib

    data = np.ones((6, 6, 9), np.float32)
    data[2, 3, 7] = np.nan
    path = tmp_path / "nan.nii"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    with pytest.raises(MedsegError, match=r"nan.nii: contains NaN or infinite values \(in slices 0-8 of its axis 2"):
        stream_scan(path, settings_for(["MRI"]))  # found by the survey, before any slab
    with stream_scan(path, settings_for(["CT"])) as stream:  # no survey: found by the slab that reads it
        assert stream.read(0, 4).shape == (1, 6, 6, 4)
        with pytest.raises(MedsegError, match=r"nan.nii: contains NaN or infinite values \(in slices 4-7 of its"):
            stream.read(4, 8)


def test_wrong_channel_count_is_refused(tmp_path):
    path = write_scan(tmp_path / "two.nii", np.random.default_rng(0), (6, 6, 6), channels=2)
    with pytest.raises(MedsegError, match=r"two.nii: has 2 channel\(s\), the run expects 1 \(MRI\)"):
        stream_scan(path, settings_for(["MRI"]))


def test_read_outside_the_grid_is_a_value_error(tmp_path):
    path = write_scan(tmp_path / "s.nii", np.random.default_rng(0), (6, 6, 6))
    with stream_scan(path, settings_for(["MRI"])) as stream, pytest.raises(ValueError, match="outside"):
        stream.read(4, 9)
