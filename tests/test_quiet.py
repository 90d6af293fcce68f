"""Quiet by default (issue 28 item 8): ``run`` prints no MONAI "Loading dataset" bar, its header names only the
settings that apply to the variant, Dice is in percent with the unit named, and ``compare`` explains that the
cascade's steps sum its models' instead of calling them a difference."""

import pandas as pd
import pytest
from click.testing import CliRunner

from medseg_mem.cli import main
from medseg_mem.core.errors import MedsegError
from medseg_mem.core.config import ModelConfig, TrainConfig
from medseg_mem.inference.metrics import dice_text
from medseg_mem.report.tables import _steps_note
import medseg_mem.runner.run as run_module
from medseg_mem.runner.run import run_settings

TINY = ["--steps", "2", "--val-every", "2", "--channels", "2,4", "--slab-size", "8", "--downsample", "0.5",
        "--batch-size", "2", "--device", "cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def full_and_cascade(tmp_path_factory, tiny_prepared):
    """``run --variant full,cascade`` with its bars on (truth guidance: ``predicted`` would train two fold models
    more): the output and the results CSV."""
    base = tmp_path_factory.mktemp("quiet")
    results = base / "results.csv"
    args = ["run", "--variant", "full,cascade", "--stage2-guidance", "truth", "--data", str(tiny_prepared.root),
            "--results", str(results), "--runs", str(base / "runs"), *TINY]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return result.output, results


def header(output: str, variant: str) -> str:
    (line,) = [line for line in output.splitlines() if line.startswith(f"[{variant}] run ")]
    return line


def test_run_prints_no_nested_monai_loading_bar(full_and_cascade):
    output, _ = full_and_cascade
    assert "Loading dataset" not in output


def test_only_the_cascade_header_names_the_stage2_guidance(tiny_prepared, tmp_path, monkeypatch):
    def stop(*args, **kwargs):
        raise MedsegError("stopped after the headers")

    monkeypatch.setattr(run_module, "train_variant", stop)  # the header is printed before any training
    for variant in ("full", "patch", "cascade"):
        result = CliRunner().invoke(main, ["run", "--variant", variant, "--stage2-guidance", "predicted", "--data",
                                           str(tiny_prepared.root), "--results", str(tmp_path / "r.csv"), "--runs",
                                           str(tmp_path / "runs"), "--no-memory-check", *TINY])  # fmt: skip
        assert "stopped after the headers" in result.output
        shown = "stage-2 guidance predicted (2 folds)" in header(result.output, variant)
        assert shown == (variant == "cascade"), result.output
    train = TrainConfig(stage2_guidance="predicted", guidance_noise=0.1)
    for variant in ("full", "patch"):
        assert "guidance" not in run_settings(ModelConfig(), train, variant)
    cascade = run_settings(ModelConfig(), train, "cascade")
    assert "stage-2 guidance predicted (2 folds)" in cascade and "guidance noise 0.1" in cascade


def test_the_run_summary_gives_dice_in_percent_with_the_unit(full_and_cascade, tiny_prepared):
    output, results = full_and_cascade
    lines = [line for line in output.splitlines() if " test Dice (%) " in line]
    assert len(lines) == 2  # full and cascade
    rows = pd.read_csv(results)
    full = rows[(rows.variant == "full") & (rows.class_index == 1)].iloc[-1]
    name = tiny_prepared.class_names[1]
    assert f"{name} {100 * full.dice:.2f}" in [line for line in lines if line.startswith("[full]")][0]
    assert dice_text(["a", "b"], [0.8013, float("nan")]) == "(%) a 80.13, b n/a"


def test_compare_says_the_cascade_steps_sum_its_models(full_and_cascade, tmp_path):
    _, results = full_and_cascade
    result = CliRunner().invoke(main, ["compare", str(results), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "differ" not in result.output
    # full: 2 steps; cascade: stage 1 and stage 2 of 2 steps each
    note = "train steps: full: 2, cascade: 4; the cascade's figure is the sum over the models it trains"
    assert note in result.output
    assert "2 models of 2 steps, as the others train" in result.output
    assert "mean Dice % (fg)" in result.output


def steps_table(**steps) -> pd.DataFrame:
    return pd.DataFrame({"variant": list(steps), "train_steps": list(steps.values()),
                         "n_test_cases": [2] * len(steps)})  # fmt: skip


@pytest.mark.parametrize("steps, says", [
    ({"full": 200, "patch": 200, "cascade": 400}, "2 models of 200 steps, as the others train"),
    ({"full": 200, "patch": 100, "cascade": 400}, "train steps differ between the variants shown"),
    ({"full": 200, "cascade": 300}, "train steps differ between the variants shown"),
    ({"full": 200, "patch": 100}, "train steps differ between the variants shown (full: 200, patch: 100)."),
])  # fmt: skip
def test_the_steps_note_calls_only_a_real_difference_a_difference(steps, says):
    assert says in _steps_note(steps_table(**steps))
    assert _steps_note(steps_table(full=200, patch=200)) == ""
