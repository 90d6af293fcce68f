"""``medseg-mem run`` in-process: bad options get one-line errors; a tiny end-to-end run appends to the CSV."""

import pandas as pd
import pytest
from click.testing import CliRunner

from medseg_mem.cli import main

TINY = ["--steps", "2", "--val-every", "1", "--channels", "2,4", "--quiet"]


def invoke(*args):
    return CliRunner().invoke(main, ["run", *args])


def error_lines(result):
    return [line for line in result.output.splitlines() if line.startswith("Error")]


def test_unknown_variant_suggests_and_lists_valid_names():
    result = invoke("--variant", "pach")
    assert result.exit_code == 2
    assert "did you mean 'patch'" in result.output and "full, patch, cascade" in result.output
    assert len(error_lines(result)) == 1 and "Traceback" not in result.output


@pytest.mark.parametrize("steps", ["0", "-3", "many"])
def test_bad_steps(steps):
    result = invoke("--steps", steps)
    assert result.exit_code == 2 and "--steps" in result.output


def test_bad_channels():
    result = invoke("--channels", "32")
    assert result.exit_code == 2 and "--channels" in result.output


@pytest.mark.parametrize(
    "option,value",
    [("--cache", "lots"), ("--cache", "-1GB"), ("--workers", "-1"), ("--precision", "fp8"), ("--workers", "two"),
     ("--guidance-noise", "1.5"), ("--class-weights", "inverse"), ("--optimizer", "rmsprop"),
     ("--augment", "heavy"), ("--foreground-oversample", "1.5"), ("--foreground-oversample", "-0.1")],
)
def test_bad_loader_and_precision_options(option, value):
    result = invoke(option, value)
    assert result.exit_code == 2 and option in result.output and "Traceback" not in result.output
    assert len(error_lines(result)) == 1


def test_prepared_folder_of_the_old_format_says_to_prepare_again(tmp_path, prepared_default):
    import json
    import shutil

    old = tmp_path / "old"
    shutil.copytree(prepared_default, old)
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "format": "medseg-mem-prepared/1"}))
    result = invoke("--data", str(old), "--results", str(tmp_path / "r.csv"), *TINY)
    assert result.exit_code == 1 and "older medseg-mem" in result.output and "medseg-mem prepare" in result.output
    assert len(error_lines(result)) == 1 and "Traceback" not in result.output


def test_missing_prepared_folder_names_it_and_the_fix(tmp_path):
    result = invoke("--data", str(tmp_path / "nowhere"), "--results", str(tmp_path / "r.csv"))
    assert result.exit_code == 1
    assert "nowhere" in result.output and "medseg-mem prepare" in result.output
    assert "Traceback" not in result.output


def test_malformed_results_csv_is_refused_before_training(tmp_path, prepared_default):
    results = tmp_path / "results.csv"
    results.write_text("this is not, a results file\n1,2\n")
    result = invoke("--data", str(prepared_default), "--results", str(results), *TINY)
    assert result.exit_code == 1 and "results.csv" in result.output
    assert results.read_text() == "this is not, a results file\n1,2\n"


def test_resume_refuses_other_training_options(tmp_path):
    result = invoke("--resume", "someid", "--steps", "5")
    assert result.exit_code == 2 and "--resume" in result.output


@pytest.mark.slow
@pytest.mark.memory_probe
def test_tiny_run_of_all_variants_appends_rows_and_resumes(tmp_path, tiny_prepared):
    results, runs = tmp_path / "results.csv", tmp_path / "runs"
    args = ["--data", str(tiny_prepared.root), "--results", str(results), "--runs", str(runs)]
    result = invoke("--variant", "all", *args, *TINY)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(results)
    assert sorted(table.variant.unique()) == ["cascade", "full", "patch"]
    assert len(table) == 3 * 2 and set(table.class_name) == {"left", "right"}
    assert table.dice.between(0, 1).all() and (table.peak_memory_bytes > 0).all()
    assert table.memory_method.str.len().gt(0).all() and (table.device == "cpu").all()
    assert (table.precision == "fp32").all() and (~table.checkpointing).all()
    run_id = table.run_id[table.variant == "cascade"].iloc[0]
    assert (runs / run_id / "stage1" / "best.pt").is_file() and (runs / run_id / "stage2" / "best.pt").is_file()
    again = invoke("--resume", run_id, *args[:-2], "--runs", str(runs), "--quiet")
    assert again.exit_code == 0, again.output
    assert f"run {run_id} is finished" in again.output  # its rows are filed: nothing is appended twice
    assert len(pd.read_csv(results)) == 3 * 2


def test_memory_levers_reach_the_csv(tmp_path, tiny_prepared):
    results = tmp_path / "results.csv"
    args = ["--data", str(tiny_prepared.root), "--results", str(results), "--runs", str(tmp_path / "runs")]
    result = invoke("--variant", "patch", *args, *TINY, "--precision", "bf16", "--checkpointing", "--cache", "0")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(results)
    assert (table.precision == "bf16").all() and table.checkpointing.all()
    assert (table.inference_precision == "bf16").all()  # evaluated as trained, unless told otherwise
    assert "note: --checkpointing lowers training memory only" in result.output


def test_inference_options_reach_the_evaluation_and_the_csv(tmp_path, tiny_prepared):
    results = tmp_path / "results.csv"
    args = ["--data", str(tiny_prepared.root), "--results", str(results), "--runs", str(tmp_path / "runs")]
    options = ["--inference-precision", "bf16", "--overlap", "0.5", "--sw-batch-size", "2"]
    result = invoke("--variant", "patch", *args, *TINY, *options)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(results)
    assert (table.precision == "fp32").all() and (table.inference_precision == "bf16").all()
    assert (table.overlap == 0.5).all() and (table.sw_batch_size == 2).all()
    assert "inference bf16, overlap 0.5, 2 slabs per call" in result.output


@pytest.mark.parametrize(
    "option, value", [("--overlap", "0.9"), ("--overlap", "-1"), ("--inference-precision", "int4"),
                      ("--sw-batch-size", "0")],
)  # fmt: skip
def test_bad_inference_options_are_one_line_errors(option, value):
    result = invoke(option, value)
    assert result.exit_code == 2 and option in result.output and "Traceback" not in result.output
    assert len(error_lines(result)) == 1


def test_recipe_options_reach_the_header_run_json_checkpoints_and_csv(tmp_path, prepared_default):
    import json

    from medseg_mem.core.files.checkpoint import load_checkpoint

    results, runs = tmp_path / "results.csv", tmp_path / "runs"
    args = ["--data", str(prepared_default), "--results", str(results), "--runs", str(runs)]
    recipe = ["--optimizer", "sgd", "--augment", "nnunet", "--foreground-oversample", "0.33"]
    result = invoke("--variant", "patch", *args, *TINY, *recipe)
    assert result.exit_code == 0, result.output
    assert "lr 0.01 constant" in result.output  # SGD's own default lr, the embedded profile's schedule
    assert "sgd, augment nnunet, foreground oversample 0.33" in result.output
    table = pd.read_csv(results)
    assert (table.optimizer == "sgd").all() and (table.augment == "nnunet").all()
    assert (table.foreground_oversample == 0.33).all()
    (run_dir,) = runs.iterdir()
    train = json.loads((run_dir / "run.json").read_text())["train"]
    assert (train["optimizer"], train["augment"], train["foreground_oversample"], train["lr"]) == ("sgd", "nnunet",
                                                                                                   0.33, 0.01)
    saved = load_checkpoint(run_dir / "patch" / "best.pt")["training"]
    assert (saved["optimizer"], saved["augment"], saved["foreground_oversample"]) == ("sgd", "nnunet", 0.33)


def test_skip_empty_slabs_is_the_older_spelling_of_foreground_oversample_1(tmp_path, tiny_prepared):
    import json

    runs = tmp_path / "runs"
    args = ["--variant", "patch", "--data", str(tiny_prepared.root), "--results", str(tmp_path / "r.csv"), *TINY]
    assert invoke(*args, "--runs", str(runs), "--skip-empty-slabs").exit_code == 0
    (run_dir,) = runs.iterdir()
    assert json.loads((run_dir / "run.json").read_text())["train"]["foreground_oversample"] == 1.0
    both = invoke(*args, "--runs", str(runs), "--any-slab", "--foreground-oversample", "0.5")
    assert both.exit_code == 2 and "--foreground-oversample" in both.output and len(error_lines(both)) == 1
