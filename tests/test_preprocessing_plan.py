"""The plan of ``predict``'s whole-scan preprocessing (:mod:`medseg_mem.memory.preprocessing`) against what the real
pipeline holds (:func:`medseg_mem.predict.scan.preprocess_scan`), and its place in ``predict``'s memory guard."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import nibabel as nib
import numpy as np
import pytest

from medseg_mem.data.headers import ScanLayout, scan_layout
from medseg_mem.memory import preprocessing
from medseg_mem.memory.preprocessing import assumed_layout, preprocessing_bytes, resampled_shape

NATIVE = {"reader": "nibabel", "spacing": None, "crop_foreground": False}
LPS = np.diag([-1.0, -1.0, 2.0, 1.0])
RAS = np.diag([1.0, 1.0, 2.0, 1.0])
CT = {"scheme": "ct", "lower": -100.0, "upper": 900.0, "mean": 400.0, "std": 200.0}
SHAPE = (256, 256, 96)  # 6.3 M voxels: 24 MiB a float32 copy, the allocator's MiB or two of noise 2-4 % of a plan


def write(path, dtype, affine, channels=1, scale=False):
    shape = SHAPE + ((channels,) if channels > 1 else ())
    values = np.random.default_rng(0).integers(1, 8, size=shape)  # few values: compresses fast
    image = nib.Nifti1Image(values.astype(dtype), affine)
    if scale:
        image.header.set_slope_inter(0.5, 10.0)
    nib.save(image, str(path))
    return path


def settings_of(modalities, **changes):
    from medseg_mem.data.transforms import make_settings

    settings = make_settings(modalities, **changes)
    settings["normalization"] = [dict(CT) if m == "CT" else n for m, n in zip(modalities, settings["normalization"])]
    return settings


CHUNK = 2**18  # normalisation slabs of 7 slices: loading and orienting are the peak, not the slab's temporaries
CASES = {  # name: (file, dtype, affine, channels, scaled, settings[, normalisation slab voxels])
    "int16 .nii.gz LPS": ("a.nii.gz", np.int16, LPS, 1, False, settings_of(["MRI"])),
    "int16 .nii LPS": ("b.nii", np.int16, LPS, 1, False, settings_of(["MRI"])),
    "float32 .nii RAS": ("c.nii", np.float32, RAS, 1, False, settings_of(["MRI"])),
    "uint8 .nii.gz LPS": ("d.nii.gz", np.uint8, LPS, 1, False, settings_of(["MRI"])),
    "float64 .nii.gz LPS": ("e.nii.gz", np.float64, LPS, 1, False, settings_of(["MRI"])),
    "scaled int16 .nii.gz": ("f.nii.gz", np.int16, LPS, 1, True, settings_of(["MRI"])),
    "2 channels CT+MRI": ("g.nii.gz", np.int16, LPS, 2, False, settings_of(["CT", "MRI"])),
    "CT cropped": ("h.nii.gz", np.int16, LPS, 1, False, settings_of(["CT"], crop_foreground=True)),
    "resampled": ("i.nii.gz", np.int16, LPS, 1, False, settings_of(["MRI"], spacing=[1.25, 1.25, 1.5])),
    "normalisation slab": ("j.nii", np.uint8, RAS, 1, False, settings_of(["MRI"]), 2**21),  # 20 slices
}

CHILD = textwrap.dedent(
    """
    import json, sys
    from medseg_mem.memory.rss import current_bytes, pin_glibc_allocator, release_freed_heap, reset_peak, status_bytes
    pin_glibc_allocator()
    from medseg_mem.data import normalize
    from medseg_mem.data.transforms import build_preprocessing
    from medseg_mem.predict.scan import preprocess_scan
    out = {}
    for name, (path, settings, warm, chunk) in json.loads(sys.argv[1]).items():
        normalize.CHUNK_VOXELS = chunk
        pipeline = build_preprocessing(settings, with_label=False)
        preprocess_scan(pipeline, "nibabel", warm, settings["modalities"])  # libraries loaded, caches filled
        release_freed_heap()
        base = current_bytes()
        reset_peak()
        data = preprocess_scan(pipeline, "nibabel", path, settings["modalities"])
        out[name] = status_bytes("VmHWM") - base
        del data
        release_freed_heap()
    import torch
    from pathlib import Path
    from medseg_mem.predict.restore import restore_grid
    from medseg_mem.predict.scan import metadata_only
    path, settings, warm, chunk = json.loads(sys.argv[1])["resampled"]
    pipeline = build_preprocessing(settings, with_label=False)
    for scan in (warm, path):  # 3 class maps mapped back onto the scan's grid, as predict does; the first warms up
        data = preprocess_scan(pipeline, "nibabel", scan, settings["modalities"])
        grid, data["image"] = data["image"].shape[1:], metadata_only(data["image"])
        release_freed_heap()
        base = current_bytes()
        reset_peak()
        labels = restore_grid(pipeline, data, torch.rand(3, *grid), Path(scan))
        out["mapped back"] = status_bytes("VmHWM") - base
        del data, labels
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """Each case's measured peak above the process before it, in one fresh process."""
    folder = tmp_path_factory.mktemp("layouts")
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(nib.openers.Opener, "default_compresslevel", 1)  # the files are written faster
    for channels in (1, 2):  # a tiny scan of each kind, read first
        warm = np.ones((8, 8, 8) + ((channels,) if channels > 1 else ()), np.int16)
        nib.save(nib.Nifti1Image(warm, LPS), str(folder / f"warm{channels}.nii.gz"))
    cases = {name: (str(write(folder / f, dtype, affine, ch, scaled)), settings, str(folder / f"warm{ch}.nii.gz"),
                    chunk[0] if chunk else CHUNK) for name, (f, dtype, affine, ch, scaled, settings, *chunk) in
             CASES.items()}  # fmt: skip
    monkeypatch.undo()
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cases)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    peaks = json.loads(done.stdout.splitlines()[-1])
    found = {name: (peaks[name], scan_layout(cases[name][0]), cases[name][1], cases[name][3]) for name in CASES}
    return {**found, "mapped back": (peaks["mapped back"],)}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_plan_within_minus_5_plus_15_percent_of_the_pipeline(measured, name, monkeypatch):
    from medseg_mem.data import normalize

    peak, layout, settings, chunk = measured[name]
    monkeypatch.setattr(normalize, "CHUNK_VOXELS", chunk)  # as the child
    planned = preprocessing_bytes(layout, settings)
    assert -0.05 <= planned / peak - 1 <= 0.15, f"{name}: planned {planned / 2**20:.1f} MiB, held {peak / 2**20:.1f}"


@pytest.mark.slow
def test_mapping_a_resampling_runs_probabilities_back_within_minus_5_plus_15_percent(measured):
    from medseg_mem.memory.preprocessing import restore_bytes

    peak, (_, layout, settings, _) = measured["mapped back"][0], measured["resampled"]
    planned = restore_bytes(layout, settings, 3)
    assert -0.05 <= planned / peak - 1 <= 0.15, f"planned {planned / 2**20:.1f} MiB, held {peak / 2**20:.1f}"


def test_layout_from_the_header(tmp_path):
    layout = scan_layout(write(tmp_path / "s.nii.gz", np.int16, LPS, channels=2))
    assert layout == ScanLayout((2, *SHAPE), 2, 2, True, True, True, (1.0, 1.0, 2.0), SHAPE)
    scaled = scan_layout(write(tmp_path / "t.nii", np.int16, RAS, scale=True))
    assert (scaled.value_itemsize, scaled.integer, scaled.compressed, scaled.reoriented) == (8, False, False, False)
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    assert scan_layout(tmp_path / "broken.nii.gz") is None


def test_the_steps_that_copy_add_to_the_plan(monkeypatch):
    from medseg_mem.data import normalize

    monkeypatch.setattr(normalize, "CHUNK_VOXELS", 2**16)  # the slab's temporaries under every other step
    ras = ScanLayout((1, 256, 256, 200), 2, 2, True, True, False, (1.0, 1.0, 1.0), (256, 256, 200))
    lps = ScanLayout(*{**ras.__dict__, "reoriented": True}.values())
    voxels, small = 256 * 256 * 200, preprocessing.SMALL_ALLOCATIONS
    assert preprocessing_bytes(lps, NATIVE) == 8 * voxels + small  # the load (int16, float32, a copy), the flipped copy
    assert preprocessing_bytes(ras, NATIVE) == 8 * voxels + small  # the load alone
    as_float = ScanLayout(*{**ras.__dict__, "stored_itemsize": 4, "value_itemsize": 4, "integer": False}.values())
    assert preprocessing_bytes(as_float, NATIVE) == 8 * voxels + small  # the compressed read: the stored array twice
    finer = preprocessing_bytes(ras, {**NATIVE, "spacing": [0.5, 0.5, 0.5]})
    assert finer == 4 * voxels + 28 * 8 * voxels + small  # the grid of an 8x larger output
    itk = preprocessing_bytes(ras, {**NATIVE, "reader": "itk"})
    assert itk == 8 * voxels + small + preprocessing.ITK_LIBRARY_BYTES


def test_resampled_shape_and_the_assumed_layout():
    assert resampled_shape((10, 10, 10), (1.0, 1.0, 3.0), (2.0, 2.0, 1.0)) == (5, 5, 30)
    assumed = assumed_layout((2, 64, 64, 32))
    assert assumed.shape == (2, 64, 64, 32) and assumed.reoriented and assumed.value_itemsize == 4


@pytest.fixture
def deep_scan_run(tmp_path, monkeypatch):
    """A patch run of tiny widths and an int16 scan stored LPS, 64x64x400: loading it whole needs more than the
    network's slabs; the planning process holds 50 MiB (as a fresh ``medseg-mem`` process would)."""
    import medseg_mem.memory.bound as bound
    from medseg_mem.variants.trained_run import open_trained_run
    from test_predict import make_run

    monkeypatch.setattr(bound, "process_now", lambda: 50 * 2**20)
    values = np.random.default_rng(0).integers(0, 200, size=(64, 64, 400)).astype(np.int16)
    nib.save(nib.Nifti1Image(values, LPS), str(tmp_path / "deep.nii.gz"))
    return open_trained_run(make_run(tmp_path)), tmp_path / "deep.nii.gz"


def test_predict_plans_loading_the_scan_whole_beside_the_inference(deep_scan_run):
    from medseg_mem.core.config import InferenceConfig
    from medseg_mem.memory.check import MemoryGuardError
    from medseg_mem.predict.guard import check_memory, whole_scan_bytes

    trained, scan = deep_scan_run
    whole = whole_scan_bytes(trained, [scan])
    assert whole == preprocessing_bytes(scan_layout(scan), trained.preprocessing) > 0
    plan = check_memory(trained, [scan], "cpu", InferenceConfig(), 64 * 2**30, print, out_of_core="never")
    assert plan.stage == "preprocessing" and plan.predicted_bytes == plan.preprocessing_bytes > whole
    budget = plan.process_bytes - 2**20  # the inference alone and the out-of-core path fit, loading it whole not
    with pytest.raises(MemoryGuardError, match=r"\(loading and preprocessing it whole\).*--out-of-core always: "
                                               r"[0-9.]+ MiB \(fits\)"):  # fmt: skip
        check_memory(trained, [scan], "cpu", InferenceConfig(), budget, print, out_of_core="never")
    streamed = check_memory(trained, [scan], "cpu", InferenceConfig(), budget, print, out_of_core="auto")
    assert streamed.out_of_core and streamed.fits


def test_a_resampling_run_is_planned_on_its_resampled_grid_with_its_probabilities(tmp_path):
    from medseg_mem.core.config import InferenceConfig
    from medseg_mem.data.transforms import make_settings
    from medseg_mem.memory.planner import plan_variant
    from medseg_mem.predict.guard import scan_layouts, scans_to_plan
    from medseg_mem.variants.trained_run import open_trained_run
    from test_predict import make_run

    trained = open_trained_run(make_run(tmp_path, "patch", make_settings(["MRI"], spacing=[1.0, 1.0, 1.0])))
    nib.save(nib.Nifti1Image(np.ones((40, 30, 10), np.int16), LPS), str(tmp_path / "thick.nii.gz"))  # 2 mm slices
    nib.save(nib.Nifti1Image(np.ones((50, 30, 12), np.int16), RAS), str(tmp_path / "wide.nii"))  # 2 mm slices
    scan, shape, whole = scans_to_plan(trained, scan_layouts([tmp_path / "thick.nii.gz", tmp_path / "wide.nii"]))
    assert (scan.name, shape) == ("wide.nii", (1, 50, 30, 24))  # the network's grid: 1 mm, RAS
    assert whole == max(preprocessing_bytes(scan_layout(tmp_path / name), trained.preprocessing)
                        for name in ("thick.nii.gz", "wide.nii"))  # fmt: skip
    labels, maps = (plan_variant("patch", shape, trained.num_classes, trained.model, inference=InferenceConfig(),
                                 input_on_disk=True, probabilities=p) for p in (False, True))  # fmt: skip
    assert maps.resident_bytes - labels.resident_bytes == 4 * 50 * 30 * (24 - 4)  # the image stays (not spilled)
