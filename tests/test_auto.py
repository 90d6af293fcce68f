"""``--variant auto``: the most accurate variant whose plan fits the budget, with its reason; one-line errors."""

import re
import shutil

import pandas as pd
import pytest
from click.testing import CliRunner

from medseg_mem.cli import main
from medseg_mem.core.errors import MedsegError
from medseg_mem.core.names import THESIS_ORDER
from medseg_mem.memory.choose import choose
from medseg_mem.report.ranking import accuracy_order
from medseg_mem.report.results import append_rows

TINY = ["--steps", "2", "--val-every", "1", "--channels", "2,4", "--quiet"]
NEEDS = {"full": 9e9, "cascade": 5e9, "patch": 3e9}


def test_choose_takes_the_first_that_fits_and_says_why():
    choice = choose(NEEDS, list(THESIS_ORDER), 8e9, "--budget", "the thesis order")
    assert choice.variant == "cascade"
    assert "full needs 8.38 GiB: over it" in choice.reason and "fits 7.45 GiB (--budget)" in choice.reason


def test_nothing_fits_names_the_smallest_need_and_the_lever():
    with pytest.raises(MedsegError, match=r"no variant fits; the smallest, patch, needs 2.79 GiB; try bf16"):
        choose(NEEDS, list(THESIS_ORDER), 1e9, "--budget", lever=lambda name: "try bf16")


def _row(variant, dice, dataset="D", source="run"):
    return dict(run_id=f"r-{variant}", timestamp="t", dataset=dataset, variant=variant, class_name="c",
                class_index=1, dice=dice, peak_memory_bytes=1, memory_method="m", device="cpu",
                inference_seconds_per_case=1, train_steps=1, train_seconds=1, seed=0, channels="2-4", loss="dice",
                slab_size="", downsample="", n_test_cases=1, package_version="0", source=source)  # fmt: skip


def test_accuracy_order_ranks_by_the_results_then_the_thesis(tmp_path):
    results = tmp_path / "results.csv"
    assert accuracy_order(results, "D")[0] == list(THESIS_ORDER)  # no CSV yet
    append_rows(results, [_row("patch", 0.9), _row("full", 0.8), _row("cascade", 0.99, dataset="other"),
                          _row("cascade", 0.99, source="benchmark")])  # fmt: skip
    order, why = accuracy_order(results, "D")
    assert order == ["patch", "full", "cascade"] and "patch 90.00, full 80.00" in why


@pytest.fixture
def calibrated(tmp_path, monkeypatch):
    """Work in ``tmp_path``; the calibrations are conftest's stand-ins (``calibration_cache``), so nothing is
    measured."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args):
    return CliRunner().invoke(main, ["run", *args])


def test_run_auto_trains_the_most_accurate_variant_that_fits(calibrated, tiny_prepared):
    result = run("--variant", "auto", "--budget", "8GB", "--data", str(tiny_prepared.root), *TINY)
    assert result.exit_code == 0, result.output
    assert "--variant auto: full: planned" in result.output and "the thesis's order" in result.output
    assert "[full] run" in result.output and "[patch] run" not in result.output


def test_run_auto_with_a_budget_nothing_fits_is_one_line(calibrated, prepared_default):
    result = run("--variant", "auto", "--budget", "1MB", "--data", str(prepared_default), *TINY)
    assert result.exit_code == 1 and "Traceback" not in result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("Error")]
    # lower bounds (the process as it is now plus the least a step holds): patch's and the cascade's slab stages
    # differ by less than the process's own growth over the session, so either may be the smallest
    assert re.search(r"no variant fits; the smallest, (patch|cascade), needs at least \d", line)
    assert "--precision bf16 --checkpointing" in line


@pytest.mark.parametrize(
    "args, text",
    [(["--variant", "auto,full"], "give it alone"), (["--variant", "auto", "--budget", "lots"], "--budget")],
)  # fmt: skip
def test_bad_auto_options(args, text):
    result = run(*args)
    assert result.exit_code == 2 and text in result.output and "Traceback" not in result.output


def test_plan_has_no_auto():
    result = CliRunner().invoke(main, ["plan", "--variant", "auto", "--shape", "1,8,8,8", "--classes", "2"])
    assert result.exit_code == 2 and "unknown variant 'auto'" in result.output


def test_predict_auto_picks_a_run_that_fits_from_a_runs_folder(calibrated, prepared_default, trained_runs):
    shared = [trained_runs(variant, data="default") for variant in ("full", "patch")]  # as `run` would leave them
    for folder in shared:
        shutil.copytree(folder, calibrated / "medseg-work" / "runs" / folder.name)
    rows = pd.concat([pd.read_csv(folder.parent.parent / "results.csv") for folder in shared])
    rows.to_csv(calibrated / "medseg-work" / "results.csv", index=False)
    scan = next((prepared_default.parent / "Task00_SyntheticRods" / "imagesTr").glob("*.nii.gz"))

    def predict(*args):
        return CliRunner().invoke(main, ["predict", str(scan), "--out", "out", "--overwrite", "--quiet",
                                         "--checkpoint", "medseg-work/runs", *args])  # fmt: skip

    chosen = predict("--variant", "auto", "--budget", "8GB")
    assert chosen.exit_code == 0, chosen.output
    picked = chosen.output.split("--variant auto: ")[1].split(":")[0]
    assert picked in ("full", "patch") and f"with {picked} (medseg-work/runs/" in chosen.output
    assert "ranked by mean test Dice (%) in medseg-work/results.csv" in chosen.output
    tight = predict("--variant", "auto", "--budget", "1KB")
    assert tight.exit_code == 1 and "no variant fits; the smallest" in tight.output and "Traceback" not in tight.output
    named = predict("--variant", "patch")
    assert named.exit_code == 0 and "with patch" in named.output
    missing = predict("--variant", "cascade")
    assert missing.exit_code == 1 and "holds no finished cascade run of SyntheticRods [" in missing.output


def test_auto_without_a_budget_or_a_way_to_find_one_is_one_line(calibrated, prepared_default, monkeypatch):
    import os

    from medseg_mem.core import machine

    monkeypatch.setattr(machine, "MEMINFO", "/nonexistent/meminfo")
    monkeypatch.setattr(os, "sysconf", lambda name: (_ for _ in ()).throw(ValueError(name)))
    result = run("--variant", "auto", "--data", str(prepared_default), *TINY)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "--budget: not given, and the free memory cannot be read here" in result.output
