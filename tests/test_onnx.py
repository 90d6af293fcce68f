"""ONNX export and ``predict --engine onnxruntime``: the exported models give PyTorch's logits, predictions agree.

Tiny runs of every variant (widths 2,4; two steps) are trained once on the embedded default, with the spawned
memory probe stubbed. Tests that run ONNX Runtime skip with a reason where ``onnx``/``onnxruntime`` (the extra
``onnx``, also in ``test``) are not installed; the one-line errors for the missing extra are tested by hiding the
modules. Each test prints what it measured (``pytest -s`` shows it); nothing asserts a time.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from medseg_mem.cli import main

VARIANTS = ("full", "patch", "cascade")
STAGES = {"full": ["full"], "patch": ["patch"], "cascade": ["stage1", "stage2"]}
INSTALLED = {name: importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime")}
HAS_ORT = all(INSTALLED.values())
needs_ort = pytest.mark.skipif(not HAS_ORT, reason="onnx/onnxruntime not installed: pip install '.[onnx]'")


def invoke(*args: str):
    return CliRunner().invoke(main, [*args])


def error_lines(result):
    return [line for line in result.output.splitlines() if line.startswith("Error")]


@pytest.fixture(scope="module")
def runs(trained_runs, tmp_path_factory):
    """``{variant: run folder}``: copies of the session's tiny trained runs on the embedded default (exports write
    into them)."""
    root, shared = tmp_path_factory.mktemp("onnx-runs"), {v: trained_runs(v, data="default") for v in VARIANTS}
    return {v: Path(shutil.copytree(run, root / v / run.name)) for v, run in shared.items()}


@pytest.fixture(scope="module")
def scan(prepared_default) -> Path:
    """One test-split image of the embedded default, as the user has it (the MSD source file)."""
    manifest = json.loads((prepared_default / "manifest.json").read_text())
    test_id = json.loads((prepared_default / "splits.json").read_text())[0]["test"][0]
    (case,) = [case for case in manifest["cases"] if case["id"] == test_id]
    return Path(manifest["source"]) / case["image"]


def torch_and_onnx_logits(run: Path, onnx_dir: Path, stage: str, x: torch.Tensor):
    """The stage's logits of ``x`` from PyTorch (as predict loads it) and from its ONNX model."""
    from medseg_mem.export.onnx_format import OnnxNetwork
    from medseg_mem.models.build import load_networks

    net = load_networks({stage: run / stage / "best.pt"}, torch.device("cpu"), channels_last=True)[stage]
    with torch.inference_mode():
        expected = net(x)
    return expected, OnnxNetwork(onnx_dir / f"{stage}.onnx")(x)


@needs_ort
@pytest.mark.parametrize("variant", VARIANTS)
def test_export_writes_one_model_per_stage_and_the_recipe(runs, tmp_path, variant):
    out = tmp_path / "onnx"
    result = invoke("export", "--format", "onnx", "--checkpoint", str(runs[variant]), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"exported {variant} into {out / STAGES[variant][0]}.onnx")
    models = [f"{s}.onnx" for s in STAGES[variant]]
    assert sorted(p.name for p in out.iterdir()) == sorted(models + [f"{m}.sha256" for m in models] + ["recipe.json"])
    recipe = json.loads((out / "recipe.json").read_text())
    assert (recipe["variant"], recipe["num_classes"], recipe["slab_axis"]) == (variant, 3, "last")
    assert recipe["class_names"] == ["background", "long_rod", "short_rod"] and recipe["modalities"] == ["MRI"]
    assert [stage["name"] for stage in recipe["stages"]] == STAGES[variant]
    assert all(key in recipe for key in ("slab_size", "downsample", "guidance", "preprocessing", "recipe"))
    worst = 0.0
    for stage in recipe["stages"]:
        assert stage["slab"] == (stage["name"] != "full" and stage["name"] != "stage1")
        assert stage["scale"] == (recipe["downsample"] if stage["name"] == "stage1" else 1.0)
        assert stage["in_channels"] == (1 + recipe["guidance_channels"] if stage["guided"] else 1)
        for shape in [(1, 32, 32, 16), (2, 9, 10, 7)]:  # a slab, and batch 2 of an odd size (padded, cropped)
            x = torch.rand(shape[0], stage["in_channels"], *shape[1:])
            expected, got = torch_and_onnx_logits(runs[variant], out, stage["name"], x)
            assert got.shape == expected.shape
            worst = max(worst, float((got - expected).abs().max()))
    print(f"\n{variant}: max |ONNX - PyTorch| logit difference {worst:.3g}")
    assert worst < 1e-3


@needs_ort
@pytest.mark.parametrize("variant", VARIANTS)
def test_both_engines_segment_a_scan_alike(runs, scan, tmp_path, variant):
    from medseg_mem.predict import predict
    from medseg_mem.predict.segment import Segmenter
    from medseg_mem.variants.trained_run import open_trained_run

    assert invoke("export", "--format", "onnx", "--checkpoint", str(runs[variant])).exit_code == 0
    labels, seconds = {}, {}
    for engine in ("torch", "onnxruntime"):
        start = time.perf_counter()
        summary = predict(runs[variant], [scan], tmp_path / engine, device="cpu", progress=False, engine=engine)
        seconds[engine] = time.perf_counter() - start
        assert summary.ok, summary.failed
        labels[engine] = np.asarray(nib.load(str(summary.written[0])).dataobj)
    same = float((labels["torch"] == labels["onnxruntime"]).mean())
    segmenter = Segmenter(open_trained_run(runs[variant]), torch.device("cpu"), engine="onnxruntime")
    image = segmenter.preprocess(scan)["image"].as_tensor()[None].float()
    stage = STAGES[variant][-1]
    guide = torch.rand(1, segmenter.run.nets[stage].session.get_inputs()[0].shape[1] - 1, *image.shape[2:])
    x = torch.cat([image, guide], dim=1) if variant == "cascade" else image
    expected, got = torch_and_onnx_logits(runs[variant], runs[variant] / "onnx", stage, x)
    difference = float((got - expected).abs().max())
    print(f"\n{variant}: {same:.4%} identical voxels, max logit difference {difference:.3g} on the scan; "
          f"one case: torch {seconds['torch']:.2f} s, onnxruntime {seconds['onnxruntime']:.2f} s")  # fmt: skip
    assert labels["torch"].shape == labels["onnxruntime"].shape and same >= 0.999
    assert difference < 1e-3


@needs_ort
def test_predict_exports_to_a_temporary_folder_when_the_run_has_none_or_a_stale_one(runs, scan, tmp_path):
    from medseg_mem.export.onnx_engine import export_problem
    from medseg_mem.variants.trained_run import open_trained_run

    run, onnx_dir = runs["cascade"], runs["cascade"] / "onnx"
    result = invoke("predict", "--quiet", "--checkpoint", str(run), str(scan), "--out", str(tmp_path / "torch"))
    assert result.exit_code == 0, result.output
    expected = np.asarray(nib.load(str(next((tmp_path / "torch").iterdir()))).dataobj)
    stale = tmp_path / "stale-export"
    assert invoke("export", "--format", "onnx", "--checkpoint", str(run), "--out", str(stale)).exit_code == 0
    recipe = json.loads((stale / "recipe.json").read_text())
    recipe["stages"][1]["checkpoint_sha256"] = "0" * 64  # as if stage2 had been trained on since the export
    (stale / "recipe.json").write_text(json.dumps(recipe))
    assert "exported from other weights than" in export_problem(open_trained_run(run), stale)
    shutil.rmtree(onnx_dir, ignore_errors=True)
    try:
        for name in ("missing", "stale"):
            if name == "stale":
                shutil.copytree(stale, onnx_dir)
            out = tmp_path / name
            result = invoke("predict", "--quiet", "--engine", "onnxruntime", "--checkpoint", str(run), str(scan),
                            "--out", str(out))  # fmt: skip
            assert result.exit_code == 0, result.output
            assert "on cpu via onnxruntime (fp32)" in result.output
            assert (np.asarray(nib.load(str(next(out.iterdir()))).dataobj) == expected).mean() >= 0.999
            if name == "missing":
                assert not onnx_dir.exists()  # the export was temporary
        assert json.loads((onnx_dir / "recipe.json").read_text()) == recipe  # a stale export is left as it was
    finally:
        shutil.rmtree(onnx_dir, ignore_errors=True)


@needs_ort
def test_a_failed_export_keeps_the_previous_model_and_leaves_no_recipe(runs, tmp_path, monkeypatch):
    from medseg_mem.export import onnx as export_module

    out = tmp_path / "onnx"
    assert invoke("export", "--format", "onnx", "--checkpoint", str(runs["cascade"]), "--out", str(out)).exit_code == 0
    before = (out / "stage2.onnx").read_bytes()
    checked = export_module.check_onnx_logits

    def fail_on_stage2(onnx_path, saved, example, target):
        if Path(target).name == "stage2.onnx":
            raise export_module.MedsegError(f"{target}: the ONNX model's logits differ from PyTorch's by 0.5")
        return checked(onnx_path, saved, example, target)

    monkeypatch.setattr(export_module, "check_onnx_logits", fail_on_stage2)
    result = invoke("export", "--format", "onnx", "--checkpoint", str(runs["cascade"]), "--out", str(out))
    assert result.exit_code == 1 and len(error_lines(result)) == 1 and "differ from PyTorch's" in result.output
    assert (out / "stage2.onnx").read_bytes() == before and not (out / "recipe.json").exists()
    assert sorted(p.name for p in out.iterdir()) == ["stage1.onnx", "stage1.onnx.sha256", "stage2.onnx",
                                                     "stage2.onnx.sha256"]  # no temporary file left; digests match
    assert (out / "stage2.onnx.sha256").read_text().split()[0] == hashlib.sha256(before).hexdigest()  # still its own


def test_unknown_export_format_is_one_line_naming_the_valid_ones(tmp_path):
    result = invoke("export", "--format", "tflite", "--checkpoint", str(tmp_path))
    assert result.exit_code == 2 and len(error_lines(result)) == 1 and "Traceback" not in result.output
    assert "'tflite' is not one of 'bundle', 'onnx'" in result.output


@pytest.mark.parametrize(
    "args, message",
    [(["--format", "onnx", "--bundle", "bundles/patch"], "--bundle only applies to --format bundle"),
     (["--format", "bundle"], "--format bundle needs --bundle"),
     (["--format", "bundle", "--bundle", "bundles/patch", "--out", "x"], "--out only applies to --format onnx")],
)  # fmt: skip
def test_export_options_of_the_other_format_are_one_line_errors(tmp_path, args, message):
    result = invoke("export", "--checkpoint", str(tmp_path), *args)
    assert result.exit_code == 2 and len(error_lines(result)) == 1 and message in result.output


@pytest.mark.parametrize("module", ["onnx", "onnxruntime"])
def test_without_the_extra_export_and_predict_say_which_extra_to_install(runs, scan, tmp_path, monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    missing = next(name for name in ("onnx", "onnxruntime") if name == module or not INSTALLED[name])
    exported = invoke("export", "--format", "onnx", "--checkpoint", str(runs["patch"]), "--out", str(tmp_path / "o"))
    out = tmp_path / "predictions"
    predicted = invoke("predict", "--quiet", "--engine", "onnxruntime", "--checkpoint", str(runs["patch"]),
                       str(scan), "--out", str(out))  # fmt: skip
    for result, option in ((exported, "--format onnx"), (predicted, "--engine onnxruntime")):
        assert result.exit_code == 1 and len(error_lines(result)) == 1 and "Traceback" not in result.output
        needs = f"{option} needs the optional packages onnx and onnxruntime ({missing} is not installed)"
        assert needs in result.output and "pip install 'medseg-mem[onnx]'" in result.output
    assert not (tmp_path / "o").exists() and not out.exists()


@pytest.mark.parametrize(
    "option, value, rule",
    [("--precision", "bf16", "--precision must be fp32 with --engine onnxruntime"),
     ("--device", "cuda", "--device must be cpu or auto with --engine onnxruntime")],
)  # fmt: skip
def test_onnxruntime_with_a_gpu_or_half_precision_is_one_line(runs, scan, tmp_path, option, value, rule):
    result = invoke("predict", "--quiet", "--engine", "onnxruntime", option, value, "--checkpoint",
                    str(runs["patch"]), str(scan), "--out", str(tmp_path / "p"))  # fmt: skip
    assert result.exit_code == 1 and len(error_lines(result)) == 1 and rule in result.output
    assert f"got '{value}'" in result.output and not (tmp_path / "p").exists()


def test_unknown_engine_is_one_line_naming_the_valid_ones(tmp_path):
    result = invoke("predict", "--engine", "tensorrt", "--checkpoint", str(tmp_path), "x", "--out", str(tmp_path))
    assert result.exit_code == 2 and len(error_lines(result)) == 1
    assert "'tensorrt' is not one of 'torch', 'onnxruntime'" in result.output
