"""``predict --out-of-core``: a scan read, segmented and written by chunks gives the in-memory path's label map
voxel for voxel (``patch``, ``cascade``; ``.nii`` and ``.nii.gz``; a tilted, permuted, anisotropic scan, cropped
or resampled), ``full`` is refused, ``auto`` picks the path by the budget, and bad input fails in one line
leaving nothing behind."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from disk_faults import install_full_disk
from test_predict import make_run, save_tilted
from test_predict_streamed import textured_scan, varied  # noqa: F401 - fixture

import medseg_mem.data.streaming.gunzip as gunzip_module
from medseg_mem.core.config import InferenceConfig
from medseg_mem.core.errors import OptionError
from medseg_mem.data.transforms import make_settings
from medseg_mem.predict import predict

SETTINGS = {"native": {}, "crop": {"crop_foreground": True}, "resampled": {"spacing": (1.0, 1.25, 1.0)}}


def leftovers(folder):
    """Files of ours left in ``folder`` (torch may keep caches of its own in ``$TMPDIR``)."""
    return [path for path in folder.iterdir() if path.name.startswith("medseg")]


def both_paths(tmp_path, run, scan, **options):
    """The label maps (arrays) and headers of ``predict`` in memory and out of core."""
    found = []
    for mode in ("never", "always"):
        summary = predict(run, [scan], tmp_path / mode, device="cpu", progress=False, out_of_core=mode, **options)
        assert summary.ok, summary.failed
        image = nib.load(str(summary.written[0]))
        found.append((np.asarray(image.dataobj), image.header.binaryblock))
    return found


CASES = [(variant, setting, ".nii.gz") for variant in ("patch", "cascade") for setting in SETTINGS]
CASES += [(variant, "native", ".nii") for variant in ("patch", "cascade")]


@pytest.mark.parametrize("variant,setting,suffix", CASES)
def test_out_of_core_equals_in_memory(tmp_path, scratch, varied, variant, setting, suffix):  # noqa: F811
    run = make_run(tmp_path, variant, settings=make_settings(["MRI"], **SETTINGS[setting]))
    scan = save_tilted(textured_scan(), tmp_path / "in" / f"case{suffix}")  # LPS-like, permuted, 1.5/2.0/1.5 mm
    (memory, memory_header), (streamed, streamed_header) = both_paths(tmp_path, run, scan)
    assert streamed_header == memory_header
    differing = int((streamed != memory).sum())
    print(f"{variant} {setting} {suffix}: {differing} of {memory.size} voxels differ")
    assert differing == 0
    assert len(np.unique(memory)) == 3  # every class occurs: the comparison is not between empty maps
    assert leftovers(scratch) == []  # the inflated copy and the writer's file are gone


def test_chunks_of_several_slabs_equal_in_memory(tmp_path, varied):  # noqa: F811
    run = make_run(tmp_path, "patch")
    scan = save_tilted(textured_scan(), tmp_path / "in" / "case.nii.gz")
    (memory, _), (streamed, _) = both_paths(tmp_path, run, scan, inference=InferenceConfig(sw_batch_size=3))
    np.testing.assert_array_equal(streamed, memory)


def test_always_refuses_what_cannot_stream(tmp_path):
    scan = save_tilted(textured_scan(), tmp_path / "in" / "case.nii")
    with pytest.raises(OptionError, match="--out-of-core.*this is a full run"):
        predict(make_run(tmp_path, "full"), [scan], tmp_path / "out", progress=False, out_of_core="always")
    with pytest.raises(OptionError, match="--out-of-core.*--overlap 0.5"):
        predict(make_run(tmp_path, "patch"), [scan], tmp_path / "out", progress=False, out_of_core="always",
                inference=InferenceConfig(overlap=0.5))  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_auto_streams_when_only_the_out_of_core_plan_fits(tmp_path, monkeypatch):
    import medseg_mem.predict.guard as guard

    run = make_run(tmp_path, "patch")
    scan = save_tilted(textured_scan(), tmp_path / "in" / "case.nii")
    planned, lines = [], []
    plan_path = guard.planned_path

    def fitting_out_of_core(check, trained, shape, inference, out_of_core, **options):
        plan = plan_path(check, trained, shape, inference, out_of_core, **options)
        planned.append(out_of_core)
        return plan if out_of_core else plan.__class__(**{**plan.to_dict(), "fits": False})

    monkeypatch.setattr(guard, "planned_path", fitting_out_of_core)
    summary = predict(run, [scan], tmp_path / "out", progress=False, warn=lines.append)
    assert summary.ok and planned == [False, True]
    assert any(line.startswith("out of core: the in-memory plan") for line in lines)


def test_truncated_gzip_fails_in_one_line_and_writes_nothing(tmp_path, scratch):
    import gzip

    run = make_run(tmp_path, "patch")
    raw = save_tilted(np.random.default_rng(0).normal(size=(64, 64, 64)).astype(np.float32), tmp_path / "ct.nii")
    packed = gzip.compress(raw.read_bytes(), compresslevel=1)
    scan = tmp_path / "in" / "ct.nii.gz"
    scan.parent.mkdir()
    scan.write_bytes(packed[: len(packed) // 2])
    summary = predict(run, [scan], tmp_path / "out", progress=False, out_of_core="always")
    ((failed, reason),) = summary.failed
    assert failed == scan and "\n" not in reason
    assert reason.startswith(f"{scan}: the gzip stream ends early") and "in slab" in reason
    assert list((tmp_path / "out").iterdir()) == [] and leftovers(scratch) == []


def test_header_claiming_more_voxels_fails_in_one_line(tmp_path, scratch):
    run = make_run(tmp_path, "patch")
    scan = save_tilted(textured_scan(), tmp_path / "in" / "short.nii")
    scan.write_bytes(scan.read_bytes()[:-400])
    summary = predict(run, [scan], tmp_path / "out", progress=False, out_of_core="always")
    ((failed, reason),) = summary.failed
    assert failed == scan and "\n" not in reason and "short.nii: its header claims" in reason
    assert list((tmp_path / "out").iterdir()) == [] and leftovers(scratch) == []


def test_full_temporary_folder_is_named(tmp_path, scratch, monkeypatch):
    run = make_run(tmp_path, "patch")
    scan = save_tilted(textured_scan(), tmp_path / "in" / "case.nii.gz")
    install_full_disk(monkeypatch, module=gunzip_module)
    summary = predict(run, [scan], tmp_path / "out", progress=False, out_of_core="always")
    ((_, reason),) = summary.failed
    assert f"into {scratch} (no space left on device); free space there or set TMPDIR" in reason
    assert list((tmp_path / "out").iterdir()) == [] and leftovers(scratch) == []


def test_out_of_core_plan_does_not_grow_with_the_last_axis():
    from medseg_mem.core.config import ModelConfig
    from medseg_mem.memory.planner import plan_variant

    model = ModelConfig(channels=(4, 8, 16))

    def predicted(variant, depth, **options):
        return plan_variant(variant, (1, 64, 64, depth), 3, model, **options).predicted_bytes

    assert predicted("patch", 320, out_of_core=True) == predicted("patch", 2048, out_of_core=True)
    assert predicted("patch", 2048, input_on_disk=True) > predicted("patch", 320, input_on_disk=True)
    grown = predicted("cascade", 2048, out_of_core=True) - predicted("cascade", 320, out_of_core=True)
    in_memory = predicted("cascade", 2048) - predicted("cascade", 320)
    assert 0 < grown < in_memory  # stage 1 runs on the whole downsampled volume: only it grows with the axis


def test_plan_shows_the_out_of_core_figures():
    from click.testing import CliRunner

    from medseg_mem.cli import main

    result = CliRunner().invoke(main, ["plan", "--shape", "1,64,64,320", "--classes", "3", "--channels", "4,8,16",
                                       "--budget", "64GB"])  # fmt: skip
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("out of core"))
    assert "patch" in line and "cascade" in line and "full needs the whole volume" in line


def test_plan_json_gives_each_row_its_out_of_core_figure():
    import json

    from click.testing import CliRunner

    from medseg_mem.cli import main

    result = CliRunner().invoke(main, ["plan", "--shape", "1,64,64,320", "--classes", "3", "--channels", "4,8,16",
                                       "--budget", "64GB", "--json"])  # fmt: skip
    rows = {row["variant"]: row for row in json.loads(result.output)}
    assert rows["full"]["out_of_core_process_bytes"] is None
    assert rows["patch"]["out_of_core_process_bytes"] > 0 and rows["patch"]["out_of_core_fits"] is True
    assert rows["cascade"]["out_of_core_fits"] is True
