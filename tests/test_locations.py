"""``MEDSEG_MEM_HOME`` moves the work folder: every command finds prepared data, runs and results there, from any
directory, and nothing is written to ``./medseg-work``."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from medseg_mem.cli import main
from medseg_mem.core import locations
from medseg_mem.memory.measure import MemoryReading

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
HAS_ORT = all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


def test_the_variable_sets_every_default_location(monkeypatch, tmp_path):
    monkeypatch.delenv(locations.HOME_VARIABLE, raising=False)
    assert locations.default_runs() == Path("medseg-work") / "runs"
    monkeypatch.setenv(locations.HOME_VARIABLE, str(tmp_path))
    assert (locations.default_prepared(), locations.default_runs(), locations.default_results()) == \
        (tmp_path / "prepared", tmp_path / "runs", tmp_path / "results.csv")  # fmt: skip
    (tmp_path / "runs" / "r1").mkdir(parents=True)
    assert locations.run_folder("r1") == tmp_path / "runs" / "r1"
    assert locations.run_folder("nowhere") == Path("nowhere")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A work folder set by the variable, with a prepared rods task and one tiny ``full`` run, made from another
    directory (``cwd``) that must stay empty."""
    root = tmp_path_factory.mktemp("locations")
    home, cwd = root / "home", root / "cwd"
    cwd.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        patch.setattr("medseg_mem.runner.run.measure_variant_memory",
                      lambda *a, **k: MemoryReading(0, "stub", "cpu"))  # fmt: skip
        runner = CliRunner(env={locations.HOME_VARIABLE: str(home)})
        prepared = runner.invoke(main, ["prepare", "--cases", "5"])
        assert prepared.exit_code == 0, prepared.output
        trained = runner.invoke(main, ["run", "--variant", "full", "--steps", "2", "--val-every", "1", "--channels",
                                       "2,4", "--quiet"])  # fmt: skip
        assert trained.exit_code == 0, trained.output
    (run_dir,) = (home / "runs").iterdir()
    return home, cwd, run_dir


def invoke(home, *args):
    """A command in the empty ``cwd`` with ``MEDSEG_MEM_HOME`` set."""
    home, cwd, _ = home
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        return CliRunner(env={locations.HOME_VARIABLE: str(home)}).invoke(main, list(args))


def test_prepare_and_run_work_in_the_home(home):
    root, cwd, run_dir = home
    assert (root / "prepared" / "manifest.json").is_file() and (root / "results.csv").is_file()
    assert json.loads((run_dir / "run.json").read_text())["data_dir"] == str((root / "prepared").resolve())
    assert list(cwd.iterdir()) == []


def test_plan_compare_and_show_find_the_homes_data_runs_and_results(home):
    root, cwd, run_dir = home
    # a fixed budget: the default (available RAM) moves between the two calls when another job runs beside
    planned = invoke(home, "plan", "--variant", "full", "--budget", "8GB")
    assert planned.exit_code == 0, planned.output
    assert planned.output == invoke(home, "plan", "--variant", "full", "--budget", "8GB", "--data",
                                    str(root / "prepared")).output  # fmt: skip
    compared = invoke(home, "compare")
    assert compared.exit_code == 0, compared.output
    assert f"wrote {root / 'comparison.md'}" in compared.output
    shown = invoke(home, "show", run_dir.name, "--device", "cpu")
    assert shown.exit_code == 0, shown.output
    assert list((run_dir / "show").glob("*.png"))
    assert list(cwd.iterdir()) == []


def test_predict_and_export_take_a_run_id_from_the_home(home, tmp_path):
    root, cwd, run_dir = home
    manifest = json.loads((root / "prepared" / "manifest.json").read_text())
    scan = Path(manifest["source"]) / manifest["cases"][0]["image"]
    by_id = invoke(home, "predict", "--checkpoint", run_dir.name, str(scan), "--out", str(tmp_path / "a"), "--quiet")
    assert by_id.exit_code == 0, by_id.output
    auto = invoke(home, "predict", "--variant", "full", str(scan), "--out", str(tmp_path / "b"), "--quiet")
    assert auto.exit_code == 0 and f"run {run_dir.name}" in auto.output, auto.output
    bundle = shutil.copytree(BUNDLES / "full", tmp_path / "bundle", ignore=shutil.ignore_patterns("models"))
    exported = invoke(home, "export", "--checkpoint", run_dir.name, "--bundle", str(bundle))
    assert exported.exit_code == 0, exported.output
    assert (bundle / "models" / "model.pt").is_file()
    if HAS_ORT:
        onnx = invoke(home, "export", "--format", "onnx", "--checkpoint", run_dir.name)
        assert onnx.exit_code == 0 and (run_dir / "onnx" / "recipe.json").is_file(), onnx.output
    assert list(cwd.iterdir()) == []


def test_help_names_the_variable():
    for args in ([], ["run"], ["prepare"], ["compare"], ["predict"], ["plan"], ["show", "x"]):
        text = CliRunner().invoke(main, [*args, "--help"]).output
        assert "MEDSEG_MEM_HOME" in text, args
