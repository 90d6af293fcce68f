"""The MONAI bundles in ``bundles/``: metadata, configs, and train.json then inference.json run in-process.

Each bundle is run through ``monai.bundle.run`` (what ``python -m monai.bundle run`` calls) with tiny settings in
a temporary work folder. Peak-memory measurement (a spawned process, tested in test_measure.py) is stubbed to
keep the suite fast, and torch runs on one thread.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import pytest
import torch

from medseg_mem.bundle.workflow import as_bool, as_widths, ensure_prepared, infer, train
from medseg_mem.data import PreparedDataset
from medseg_mem.core.errors import MedsegError
from medseg_mem.export.bundle import export_bundle
from medseg_mem.models.label_net import LabelUNet3D
from medseg_mem.models.unet import UNet3D
from hang_guard import HANG_GUARD_S

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
VARIANTS = ("full", "patch", "cascade")
pytestmark = pytest.mark.filterwarnings("ignore:parsing config_file")
STAGES = {"full": ["full"], "patch": ["patch"], "cascade": ["stage1", "stage2"]}
METADATA_KEYS = ("version", "changelog", "monai_version", "pytorch_version", "numpy_version", "task",
                 "description", "authors", "copyright", "network_data_format")  # fmt: skip
TINY = {"steps": 2, "val_every": 2, "channels": [2, 4], "progress": False}
STANDARD_IDS = {"train": ("trainer", "initialize", "run", "finalize"),
                "inference": ("network_def", "preprocessing", "inferer", "postprocessing", "evaluator", "initialize",
                              "run", "finalize")}  # fmt: skip
SCHEMA_URL = ("https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
              "meta_schema_20240725.json")
# what that schema requires and the type of each field it declares (checked by hand: the schema is not vendored)
SCHEMA_REQUIRED = ("schema", "version", "monai_version", "pytorch_version", "numpy_version",
                   "required_packages_version", "task", "description", "authors", "copyright", "network_data_format")
SCHEMA_TYPES = {"changelog": dict, "required_packages_version": dict, "eval_metrics": dict, "supported_apps": dict,
                "references": list, "network_data_format": dict, **{key: str for key in (
                    "schema", "version", "monai_version", "pytorch_version", "numpy_version", "task", "description",
                    "authors", "copyright", "data_source", "data_type", "image_classes", "label_classes",
                    "pred_classes", "intended_use")}}  # fmt: skip
TENSOR_TYPES = {"type": str, "format": str, "num_channels": int, "spatial_shape": list, "dtype": str,
                "value_range": list, "is_patch_data": bool, "channel_def": dict}  # fmt: skip
TENSOR_REQUIRED = ("type", "format", "num_channels", "spatial_shape", "dtype", "value_range")


def run_bundle(variant: str, config: str, **overrides) -> None:
    from monai.bundle import run

    run(config_file=str(BUNDLES / variant / "configs" / f"{config}.json"), **overrides)


@pytest.fixture
def one_thread():
    """One torch thread (tiny volumes: a second thread only contends); the memory probe is stubbed (conftest)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("variant", VARIANTS)
def test_bundle_layout_and_metadata(variant):
    root = BUNDLES / variant
    for name in ("configs/metadata.json", "configs/train.json", "configs/inference.json", "docs/README.md"):
        assert (root / name).is_file(), name
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    assert all(key in meta for key in METADATA_KEYS)
    assert set(meta["network_data_format"]) == {"inputs", "outputs"}
    stages = meta["medseg_mem"]["stages"]
    assert_metadata_fits_schema(meta, stages[STAGES[variant][-1]]["in_channels"], meta["medseg_mem"]["num_classes"])
    for config, ids in STANDARD_IDS.items():
        content = json.loads((root / "configs" / f"{config}.json").read_text())
        assert content["variant"] == variant and content["work_dir"] == "$medseg_workflow.work_folder()"
        assert [key for key in ids if key not in content] == [], config


def assert_metadata_fits_schema(meta: dict, in_channels: int, num_classes: int) -> None:
    """``meta`` has what MONAI's metadata schema (``SCHEMA_URL``) requires, with its types, and describes a network
    taking ``in_channels`` float32 channels and returning one uint8 channel of labels 0..``num_classes - 1``."""
    assert meta["schema"] == SCHEMA_URL
    assert [key for key in SCHEMA_REQUIRED if key not in meta] == []
    assert wrong_types(meta, SCHEMA_TYPES) == {}
    assert all(isinstance(reference, str) for reference in meta.get("references", []))
    io = meta["network_data_format"]
    assert set(io) >= {"inputs", "outputs"}
    for tensor in (*io["inputs"].values(), *io["outputs"].values()):
        assert [key for key in TENSOR_REQUIRED if key not in tensor] == []
        assert wrong_types(tensor, TENSOR_TYPES) == {}
        assert all(isinstance(size, (str, int)) for size in tensor["spatial_shape"])
        assert all(isinstance(bound, (int, float)) for bound in tensor["value_range"])
    image, pred = io["inputs"]["image"], io["outputs"]["pred"]
    assert (image["num_channels"], len(image["channel_def"]), image["dtype"]) == (in_channels, in_channels, "float32")
    assert (pred["num_channels"], pred["dtype"], pred["format"]) == (1, "uint8", "labels")
    assert pred["value_range"] == [0, num_classes - 1]


def verify_metadata_with_monai(meta_file: Path) -> bool:
    """MONAI's own ``verify_metadata`` of ``meta_file`` against the schema file ``$MEDSEG_META_SCHEMA`` (MONAI reads
    an existing file instead of downloading it); ``False`` (nothing checked) without that file or jsonschema."""
    schema = os.environ.get("MEDSEG_META_SCHEMA")
    if not (schema and Path(schema).is_file()) or importlib.util.find_spec("jsonschema") is None:
        return False
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(meta_file), filepath=schema)  # raises ValueError naming the failed rule
    return True


@pytest.mark.parametrize("variant", VARIANTS)
def test_metadata_passes_monais_verify_metadata(variant):
    if not verify_metadata_with_monai(BUNDLES / variant / "configs" / "metadata.json"):
        pytest.skip("set MEDSEG_META_SCHEMA to a copy of the schema metadata.json names, and install jsonschema")


def wrong_types(fields: dict, types: dict) -> dict:
    """The entries of ``fields`` whose value is not of the type ``types`` names (a bool is no integer here)."""
    def fits(value, kind) -> bool:
        return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))

    return {key: value for key, value in fields.items() if key in types and not fits(value, types[key])}


def test_inference_before_training_says_run_train_first(tmp_path):
    with pytest.raises(Exception) as caught:
        run_bundle("patch", "inference", work_dir=str(tmp_path), input_dir=str(tmp_path), progress=False)
    chain, error = [], caught.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__
    assert any("run train.json first" in message and "bundles/patch/configs/train.json" in message for message in chain)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["full", "cascade"])
def test_train_then_infer_on_a_prepared_dataset(tmp_path, prepared_default, one_thread, variant):
    settings = {"work_dir": str(tmp_path), "data_dir": str(prepared_default)}
    run_bundle(variant, "train", **settings, **TINY)
    model_dir = tmp_path / "models" / variant
    assert (model_dir / "run.json").is_file()
    assert all((model_dir / stage / "best.pt").is_file() for stage in STAGES[variant])
    run_bundle(variant, "inference", **settings, progress=False)
    assert_test_split_predicted(prepared_default, tmp_path / "predictions" / variant)


@pytest.mark.slow
def test_patch_bundle_prepares_the_embedded_default_when_missing(tmp_path, one_thread):
    run_bundle("patch", "train", work_dir=str(tmp_path), **TINY)
    assert (tmp_path / "prepared" / "manifest.json").is_file() and (tmp_path / "results.csv").is_file()
    run_bundle("patch", "inference", work_dir=str(tmp_path), progress=False)
    run_bundle("patch", "inference", work_dir=str(tmp_path), progress=False)  # a rerun replaces its outputs
    assert_test_split_predicted(tmp_path / "prepared", tmp_path / "predictions" / "patch")


def assert_test_split_predicted(data_dir: Path, out_dir: Path) -> None:
    dataset = PreparedDataset.open(data_dir)
    test = set(dataset.ids("test"))
    cases = [case for case in dataset.manifest["cases"] if case["id"] in test]
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(f"{case['id']}_seg.nii.gz" for case in cases)
    for case in cases:
        source = nib.load(str(Path(dataset.manifest["source"]) / case["image"]))
        out = nib.load(str(out_dir / f"{case['id']}_seg.nii.gz"))
        assert out.shape == source.shape and (out.affine == source.affine).all()


def test_ensure_prepared_keeps_a_prepared_folder(prepared_default):
    before = (prepared_default / "manifest.json").stat().st_mtime_ns
    assert ensure_prepared(prepared_default) == prepared_default
    assert (prepared_default / "manifest.json").stat().st_mtime_ns == before


def test_command_line_values_are_understood():
    assert as_widths("2,4") == (2, 4) and as_widths([8, 16]) == (8, 16) and as_widths((2, 4)) == (2, 4)
    assert as_bool("false", "progress") is False and as_bool(True, "progress") is True
    with pytest.raises(MedsegError, match="--channels"):
        as_widths("wide")
    with pytest.raises(MedsegError, match="--overwrite must be true or false"):
        as_bool("maybe", "overwrite")


def monai_bundle(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m monai.bundle ARGS`` in a subprocess (what a user types), one torch thread."""
    pytest.importorskip("fire")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "monai.bundle", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)


@pytest.mark.slow
def test_inference_without_a_trained_model_is_one_line_on_the_command_line(tmp_path):
    done = monai_bundle("run", "--config_file", str(BUNDLES / "patch" / "configs" / "inference.json"), cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr + done.stdout
    (line,) = [text for text in done.stderr.splitlines() if "medseg-mem:" in text]
    assert "no trained patch checkpoint" in line and "bundles/patch/configs/train.json" in line


@pytest.fixture
def two_channel_task(tmp_path, make_msd_task):
    """A 2-channel MSD task and its prepared folder: ``(task folder, prepared folder)``."""
    from medseg_mem.core.prepare_config import PrepareConfig
    from medseg_mem.data.prepare import prepare

    task = make_msd_task(tmp_path / "two", n_cases=4, shape=(8, 8, 20), channels=2)
    prepare(PrepareConfig(task_dir=task, out_dir=tmp_path / "two-prepared"), progress=False)
    return task, tmp_path / "two-prepared"


@pytest.mark.slow
def test_a_model_for_other_channels_stops_before_predicting(tmp_path, tiny_prepared, two_channel_task,
                                                            one_thread, monkeypatch):  # fmt: skip
    task, prepared = two_channel_task
    model_dir = train("patch", work_dir=tmp_path, data_dir=tiny_prepared.root, **TINY)  # 1 channel (MRI)
    monkeypatch.setattr("medseg_mem.predict.predict", lambda *a, **k: pytest.fail("predict ran"))
    expects = f"has 2 channel(s), the patch model in {model_dir} expects 1 (MRI)"
    retrain = "retrain on it: python -m monai.bundle run --config_file bundles/patch/configs/train.json"
    with pytest.raises(MedsegError) as caught:
        infer("patch", model_dir, tmp_path / "out", data_dir=prepared, progress=False)
    assert str(caught.value) == f"data_dir {prepared}: {expects}; use a bundle trained on this task, or {retrain} " \
                                f"--data_dir {prepared}"  # fmt: skip
    with pytest.raises(MedsegError) as caught:
        infer("patch", model_dir, tmp_path / "out", input_dir=task / "imagesTr", progress=False)
    scan = task / "imagesTr" / "tiny_000.nii.gz"
    assert str(caught.value) == f"{scan}: {expects}; 4 of 4 scan(s) differ; use a bundle trained on their task, " \
                                f"or {retrain} --task_dir <its MSD task folder>"  # fmt: skip
    assert "\n" not in str(caught.value) and not (tmp_path / "out").exists()
    config = str(BUNDLES / "patch" / "configs" / "inference.json")
    done = monai_bundle("run", "--config_file", config, "--model_dir", str(model_dir),
                        "--input_dir", str(task / "imagesTr"), "--progress", "false", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr + done.stdout
    (line,) = [text for text in done.stderr.splitlines() if "medseg-mem:" in text]
    assert "tiny_000.nii.gz: has 2 channel(s)" in line and "expects 1 (MRI)" in line and "retrain on it" in line


def test_label_network_is_the_unet_argmax_and_compiles_to_torchscript():
    torch.manual_seed(0)
    labels = LabelUNet3D(2, 3, channels=(2, 4, 8)).eval()
    plain = UNet3D(2, 3, channels=(2, 4, 8)).eval()
    plain.load_state_dict(labels.state_dict())
    x = torch.randn(1, 2, 5, 9, 13)
    out = labels(x)
    assert out.dtype == torch.uint8 and out.shape == (1, 1, 5, 9, 13)
    assert torch.equal(out[:, 0].long(), plain(x).argmax(1)) and torch.equal(torch.jit.script(labels)(x), out)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["patch", "cascade"])
def test_exported_bundle_passes_monai_verify_net_in_out_and_ckpt_export(tmp_path, tiny_prepared, one_thread,
                                                                       variant):  # fmt: skip
    model_dir = train(variant, work_dir=tmp_path, data_dir=tiny_prepared.root, **TINY)
    bundle = shutil.copytree(BUNDLES / variant, tmp_path / "bundle", ignore=shutil.ignore_patterns("models"))
    export_bundle(model_dir, bundle)
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    first_conv = torch.load(str(bundle / "models" / "model.pt"), weights_only=True)["encoders.0.0.weight"]
    assert_metadata_fits_schema(meta, first_conv.shape[1], len(tiny_prepared.class_names))
    verify_metadata_with_monai(bundle / "configs" / "metadata.json")
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert (pred["num_channels"], pred["dtype"], pred["format"], pred["value_range"]) == (1, "uint8", "labels", [0, 2])
    assert meta["medseg_mem"]["stages"][STAGES[variant][-1]]["channels"] == [2, 4]
    weights = ["model.pt"] + [f"{stage}.pt" for stage in STAGES[variant][:-1]]
    assert sorted(p.name for p in (bundle / "models").iterdir()) == sorted(weights + [f"{w}.sha256" for w in weights])
    files = ["--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json"]
    verified = monai_bundle("verify_net_in_out", "--net_id", "network_def", *files, "--device", "cpu", cwd=bundle)
    assert verified.returncode == 0, verified.stderr[-2000:]
    exported = monai_bundle("ckpt_export", "network_def", "--filepath", "model.ts", "--ckpt_file", "models/model.pt",
                            *files, cwd=bundle)  # fmt: skip
    assert exported.returncode == 0, exported.stderr[-2000:]
    channels = meta["network_data_format"]["inputs"]["image"]["num_channels"]
    assert torch.jit.load(str(bundle / "model.ts"))(torch.randn(1, channels, 4, 4, 20)).dtype == torch.uint8


def test_export_refuses_a_bundle_of_another_variant(tmp_path):
    from medseg_mem.export.bundle import check_bundle

    with pytest.raises(MedsegError, match="a bundle of the patch variant, but the run is full; pass bundles/full"):
        check_bundle(BUNDLES / "patch", "full")
    with pytest.raises(MedsegError, match="not a MONAI bundle"):
        check_bundle(tmp_path, "full")


def test_the_export_command_module_imports_neither_torch_nor_monai():
    code = "import sys, medseg_mem.cli.export; print(sorted({'torch', 'monai'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
