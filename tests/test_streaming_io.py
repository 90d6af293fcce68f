"""The out-of-core engine's files: scans read by slabs (every file axis, scaled integers, 4D), ``.nii.gz`` inflated
into ``$TMPDIR`` and removed, bad input in one line (a truncated or corrupt stream, a header claiming more voxels
than the file holds, a full disk), and label maps streamed into NIfTI equal to what ``predict`` writes today."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import torch
from disk_faults import install_full_disk
from streaming_scans import in_memory, settings_for, write_scan

import medseg_mem.data.streaming.gunzip as gunzip_module
import medseg_mem.data.streaming.writer as writer_module
from medseg_mem.data.streaming.preprocess import stream_scan
from medseg_mem.data.streaming.source import open_scan
from medseg_mem.data.streaming.writer import LabelMapWriter
from medseg_mem.data.transforms import build_preprocessing
from medseg_mem.core.errors import MedsegError
from medseg_mem.predict.files import label_header as _label_header, write_label_map
from medseg_mem.predict.restore import restore_grid, restore_labels

CLASSES = 3


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("compressed", [False, True])
def test_read_equals_the_whole_array_along_every_axis(tmp_path, scratch, channels, compressed):
    path = write_scan(tmp_path / f"s.nii{'.gz' if compressed else ''}", np.random.default_rng(0), (7, 8, 9), channels)
    whole = np.asanyarray(nib.load(str(path)).dataobj).astype(np.float32)
    whole = np.moveaxis(whole, -1, 0) if channels > 1 else whole[None]
    with open_scan(path) as scan:
        assert (scan.shape, scan.channels) == ((7, 8, 9), channels)
        assert len(list(scratch.iterdir())) == (1 if compressed else 0)  # the inflated copy, in $TMPDIR
        for axis in range(3):
            index = [slice(None)] * 4
            index[1 + axis] = slice(2, 6)
            assert np.array_equal(scan.read(axis, 2, 6), whole[tuple(index)])
    assert list(scratch.iterdir()) == []


def _gzip_bytes(path, size):
    """The first ``size`` bytes of the gzip file of ``path``'s content."""
    return gzip.compress(path.read_bytes(), compresslevel=1)[:size]


def test_truncated_gzip_names_the_file_and_slab_and_leaves_nothing(tmp_path, scratch):
    raw = write_scan(tmp_path / "ct.nii", np.random.default_rng(1), (32, 32, 40), scaled=False)
    packed = gzip.compress(raw.read_bytes(), compresslevel=1)
    path = tmp_path / "ct.nii.gz"
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(MedsegError, match=r"ct.nii.gz: the gzip stream ends early \(the file is truncated\) after "
                                          r"\d+ compressed and \d+ decompressed bytes, in slab \d+ along the last "
                                          r"axis; copy or export the scan again"):  # fmt: skip
        open_scan(path)
    assert list(scratch.iterdir()) == []


def test_corrupt_gzip_is_one_line(tmp_path, scratch):
    raw = write_scan(tmp_path / "ct.nii", np.random.default_rng(1), (16, 16, 20), scaled=False)
    packed = bytearray(gzip.compress(raw.read_bytes(), compresslevel=1))
    packed[len(packed) // 2 : len(packed) // 2 + 64] = bytes(64)
    path = tmp_path / "bad.nii.gz"
    path.write_bytes(bytes(packed))
    with pytest.raises(MedsegError, match=r"bad.nii.gz: the gzip stream is corrupt \(.*\) after \d+ compressed"):
        open_scan(path)
    assert list(scratch.iterdir()) == []


def test_header_claiming_more_voxels_than_the_file_holds_is_refused(tmp_path, scratch):
    raw = write_scan(tmp_path / "short.nii", np.random.default_rng(2), (10, 10, 10))  # int16: 2000 bytes of voxels
    raw.write_bytes(raw.read_bytes()[:-500])
    with pytest.raises(MedsegError, match=r"short.nii: its header claims 2000 bytes of voxels but the file holds "
                                          r"1500; the file is truncated or its header is wrong"):  # fmt: skip
        open_scan(raw)
    packed = tmp_path / "short.nii.gz"  # a complete gzip stream of a short file: found once inflated
    packed.write_bytes(gzip.compress(raw.read_bytes()))
    with pytest.raises(MedsegError, match="short.nii.gz: its header claims 2000 bytes of voxels but the file holds"):
        open_scan(packed)
    assert list(scratch.iterdir()) == []


def test_full_disk_while_inflating_names_the_folder_and_tmpdir(tmp_path, scratch, monkeypatch):
    path = write_scan(tmp_path / "ct.nii.gz", np.random.default_rng(3), (16, 16, 16))
    install_full_disk(monkeypatch, module=gunzip_module)
    with pytest.raises(MedsegError, match=rf"cannot decompress .*ct.nii.gz into {scratch} \(no space left on device\)"
                                          "; free space there or set TMPDIR"):  # fmt: skip
        open_scan(path)
    assert list(scratch.iterdir()) == []


def _preprocessed_labels(image: torch.Tensor) -> torch.Tensor:
    """A label map (0, 1, 2) of a preprocessed image ``(C, X, Y, Z)``: its first channel thresholded."""
    return (image[0] > 0.2).to(torch.uint8) + (image[0] > 0.9).to(torch.uint8)


def _probabilities(image: torch.Tensor) -> torch.Tensor:
    return torch.softmax(torch.stack([-image[0], 0.3 * image[0], image[0] - 0.5]) * 4, dim=0)


def _write_streamed(path, settings, target, probabilities, depth=3):
    with stream_scan(path, settings) as stream:
        with LabelMapWriter(stream, target, lambda h: _label_header(h, CLASSES), probabilities) as writer:
            for _, slab in stream.slabs(depth):
                writer.write(_probabilities(slab) if probabilities else _preprocessed_labels(slab))
            writer.commit()


def _write_as_predict(path, settings, target, probabilities):
    """What ``predict`` writes today for these labels: ``Invertd`` then ``write_label_map``."""
    pipeline = build_preprocessing(settings, with_label=False)
    data = pipeline({"image": str(path)})
    image = data["image"].as_tensor()
    if probabilities:
        labels = restore_grid(pipeline, data, _probabilities(image), path)
    else:
        labels = restore_labels(pipeline, data, _preprocessed_labels(image)[None], path)
    write_label_map(labels, path, target, CLASSES)


@pytest.mark.parametrize("modalities,spacing,crop,probabilities", [
    (["MRI"], None, False, False),
    (["CT", "MRI"], None, True, False),
    (["MRI"], (1.1, 0.8, 1.6), False, True),
    (["MRI", "MRI"], (0.9, 1.3, 1.2), True, True),
    (["CT"], (1.2, 1.2, 0.9), True, False),
])  # fmt: skip
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_label_map_equals_what_predict_writes(tmp_path, scratch, modalities, spacing, crop, probabilities, suffix):
    """Same voxels, same header bytes (shape, affine, qform/sform, uint8, label intent) as ``predict`` writes."""
    rng = np.random.default_rng(len(modalities) + (spacing is not None) * 2 + crop * 4)
    path = write_scan(tmp_path / "scan.nii.gz", rng, tuple(int(s) for s in rng.integers(10, 16, 3)), len(modalities))
    settings = settings_for(modalities, spacing, crop)
    assert in_memory(path, settings).shape[1:] != (0, 0, 0)
    _write_streamed(path, settings, tmp_path / f"streamed{suffix}", probabilities)
    _write_as_predict(path, settings, tmp_path / "predict.nii.gz", probabilities)
    ours, theirs = nib.load(str(tmp_path / f"streamed{suffix}")), nib.load(str(tmp_path / "predict.nii.gz"))
    assert ours.header.binaryblock == theirs.header.binaryblock
    assert np.array_equal(np.asanyarray(ours.dataobj), np.asanyarray(theirs.dataobj))
    assert 0 < int((np.asanyarray(ours.dataobj) > 0).sum())
    assert list(scratch.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predict.nii.gz", "scan.nii.gz", "scratch",
                                                          f"streamed{suffix}"]  # fmt: skip


def test_a_failure_midway_leaves_the_old_file_and_nothing_else(tmp_path, scratch):
    path = write_scan(tmp_path / "scan.nii", np.random.default_rng(4), (8, 8, 12))
    target = tmp_path / "out" / "seg.nii.gz"
    target.parent.mkdir()
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="network died"):
        with stream_scan(path, settings_for(["MRI"])) as stream, LabelMapWriter(stream, target) as writer:
            for start, slab in stream.slabs(4):
                if start == 4:
                    raise RuntimeError("network died")
                writer.write(_preprocessed_labels(slab))
    assert target.read_bytes() == b"old"
    assert [p.name for p in target.parent.iterdir()] == ["seg.nii.gz"]
    assert list(scratch.iterdir()) == []


def test_missing_slices_are_refused_at_commit(tmp_path, scratch):
    path = write_scan(tmp_path / "scan.nii", np.random.default_rng(4), (8, 8, 12))
    target = tmp_path / "seg.nii"
    with stream_scan(path, settings_for(["MRI"])) as stream, LabelMapWriter(stream, target) as writer:
        writer.write(torch.zeros(8, 8, 5, dtype=torch.uint8))
        with pytest.raises(MedsegError, match=r"seg.nii: got 5 of 12 slices; not written"):
            writer.commit()
    assert not target.exists()


def test_full_disk_while_writing_names_the_folder(tmp_path, scratch, monkeypatch):
    path = write_scan(tmp_path / "scan.nii", np.random.default_rng(5), (8, 8, 12))
    target = tmp_path / "seg.nii.gz"
    install_full_disk(monkeypatch, module=writer_module)
    with pytest.raises(MedsegError, match=rf"cannot write the label map into {scratch} \(no space left on device\); "
                                          "free space there or set TMPDIR"):  # fmt: skip
        with stream_scan(path, settings_for(["MRI"])) as stream, LabelMapWriter(stream, target) as writer:
            for _, slab in stream.slabs(4):
                writer.write(_preprocessed_labels(slab))
    assert not target.exists()
    assert list(scratch.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.nii", "scratch"]
