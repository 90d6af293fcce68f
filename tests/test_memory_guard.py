"""The memory promise end to end: run's and predict's guards, the lower bound that answers without calibrating,
calibration once per machine (the user's cache, not per folder, not per width list), the whole-process figure."""

from __future__ import annotations

import itertools
import json

import pytest
from click.testing import CliRunner

from medseg_mem.cli import main
from medseg_mem.core.config import ModelConfig, TrainConfig
from test_predict import bright_scan, make_run, save_tilted

TINY_RUN = ["--channels", "2,4", "--steps", "1", "--val-every", "1", "--quiet"]
MiB = 2**20


def invoke(*args):
    return CliRunner().invoke(main, list(args))


def one_error_line(result) -> str:
    """The single ``Error:`` line of a failed command (and no traceback)."""
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("Error")]
    return line


@pytest.fixture
def small_process(monkeypatch):
    """The process that plans holds 50 MiB, as a fresh ``medseg-mem`` process would (the test process is larger)."""
    import medseg_mem.memory.bound as bound

    monkeypatch.setattr(bound, "process_now", lambda: 50 * MiB)


@pytest.fixture
def no_calibrating(monkeypatch):
    """Fail a test that would calibrate (measure) or plan with a calibration."""
    import medseg_mem.memory.calibration as calibration

    def refuse(*args, **kwargs):
        raise AssertionError("calibrated although the answer needed no calibration")

    monkeypatch.setattr(calibration, "calibrate", refuse)
    monkeypatch.setattr(calibration, "cached_calibration", refuse)


def run_args(tmp_path, data, *extra):
    return ["run", "--data", str(data), "--results", str(tmp_path / "r.csv"), "--runs", str(tmp_path / "runs"),
            *TINY_RUN, *extra]  # fmt: skip


def test_run_refuses_a_plan_over_the_budget_in_one_line_with_the_levers(tmp_path, prepared_default, small_process):
    result = invoke(*run_args(tmp_path, prepared_default, "--variant", "full", "--budget", "340MiB"))
    line = one_error_line(result)
    assert line.startswith("Error: full: training (stage full validation) plans ") and "for the whole process" in line
    assert "over the budget 340 MiB (--budget)" in line and "--no-memory-check" in line
    for lever in ("--precision bf16: ", "--checkpointing: ", "--batch-size 1: ", "--variant patch: "):
        assert lever in line and " MiB" in line.split(lever)[1].split(";")[0]
    assert not any((tmp_path / "runs").iterdir()) and not (tmp_path / "r.csv").exists()  # before any training


@pytest.mark.slow
@pytest.mark.memory_probe
def test_no_memory_check_trains_anyway_and_files_the_plan(tmp_path, prepared_default, small_process):
    result = invoke(*run_args(tmp_path, prepared_default, "--variant", "patch", "--budget", "340MiB",
                              "--no-memory-check"))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "(over it: --no-memory-check runs it anyway)" in result.output
    from medseg_mem.report.results import read_results

    row = read_results(tmp_path / "r.csv").iloc[0]
    assert row.planned_process_bytes > row.planned_bytes > 0 and row.train_planned_process_bytes > 0
    assert row.process_peak_bytes > row.peak_memory_bytes > 0 and row.train_process_peak_bytes > 0


@pytest.mark.parametrize("extra", [["--variant", "patch", "--batch-size", "100000000"],
                                   ["--variant", "patch", "--slab-size", "100000"], ["--slab-size", "100000"]])
def test_absurd_settings_answer_from_the_lower_bound_without_planning_or_calibrating(
    tmp_path, prepared_default, no_calibrating, monkeypatch, extra
):  # fmt: skip
    import medseg_mem.memory.planner as planner

    monkeypatch.setattr(planner, "plan_variant", lambda *a, **k: pytest.fail("traced a plan"))
    args = ["run", "--data", str(prepared_default), "--results", str(tmp_path / "r.csv"), "--budget", "8GB", *extra]
    line = one_error_line(invoke(*args))  # the embedded default's widths, 8-128
    assert line.startswith("Error: patch: training needs at least ") and "over the budget 7.45 GiB" in line
    assert ("--batch-size 1: at least" in line) if "--batch-size" in extra else ("--slab-size 16: at least" in line)


def test_the_lower_bound_never_exceeds_the_trace():
    """The torch-free bound of absurd settings is under every traced step (widths, precision, checkpointing)."""
    from medseg_mem.memory.bound import training_floor
    from medseg_mem.memory.planner import plan_variant

    for channels, variant, precision, checkpointing in itertools.product(
        ((4, 8, 16), (8, 16, 32, 64, 128), (32, 64, 128)), ("full", "patch", "cascade"), ("fp32", "bf16"),
        (False, True)
    ):  # fmt: skip
        train = TrainConfig(batch_size=2, precision=precision, checkpointing=checkpointing, cache_bytes=0,
                            channels_last=False)  # fmt: skip
        plan = plan_variant(variant, (1, 32, 32, 48), 3, ModelConfig(channels=channels, slab_size=8), train,
                            device="cuda", validation=False)  # fmt: skip
        floor = training_floor(variant, (1, 32, 32, 48), 2, 8, channels[0], precision)
        assert floor <= plan.predicted_bytes - plan.host_bytes, (channels, variant, precision, checkpointing)


def test_slab_variants_are_those_with_a_full_resolution_slab_stage():
    from medseg_mem.memory.bound import SLAB_VARIANTS
    from medseg_mem.core.names import VARIANT_NAMES
    from medseg_mem.variants import get_variant

    slab = {n for n in VARIANT_NAMES if any(s.slab and s.scale == 1.0 for s in get_variant(n).stages())}
    assert slab == set(SLAB_VARIANTS)


def test_predict_refuses_a_plan_over_the_budget_and_proceeds_without_the_check(tmp_path, small_process):
    run, scan = make_run(tmp_path), save_tilted(bright_scan(), tmp_path / "scan.nii.gz")
    args = ["predict", "--quiet", "--checkpoint", str(run), str(scan), "--out", str(tmp_path / "out"), "--budget",
            "320MiB"]  # fmt: skip
    line = one_error_line(invoke(*args))
    assert f"{scan}: patch (fp32) plans " in line and "over the budget 320 MiB (--budget)" in line
    assert "--precision bf16: " in line and "--no-memory-check" in line
    assert not (tmp_path / "out" / "scan_seg.nii.gz").exists()
    anyway = invoke(*args, "--no-memory-check")
    assert anyway.exit_code == 0 and "predicting anyway" in anyway.stderr
    assert "planned" in anyway.stdout and (tmp_path / "out" / "scan_seg.nii.gz").exists()


def test_predict_auto_takes_the_run_whose_whole_process_fits(tmp_path, small_process):
    """The seeded calibration's process is 300 MiB: 100MB fits no run, 400MiB the one the plan says."""
    for variant in ("full", "patch"):
        make_run(tmp_path / "runs", variant)
    scan = save_tilted(bright_scan(), tmp_path / "scan.nii.gz")

    def predict(budget):
        return invoke("predict", "--quiet", "--checkpoint", str(tmp_path / "runs"), str(scan), "--out",
                      str(tmp_path / "out"), "--overwrite", "--variant", "auto", "--budget", budget)  # fmt: skip

    assert "no variant fits; the smallest" in one_error_line(predict("100MB"))
    chosen = predict("400MiB")
    assert chosen.exit_code == 0, chosen.output
    planned = float(chosen.output.split("planned ")[1].split(" MiB")[0])
    assert planned <= 400 and "peak resident memory of the process" in chosen.output


# Calibration once per machine ----------------------------------------------------------------------------------


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """A fresh user cache, and a stand-in for the measurement that counts its calls."""
    import medseg_mem.memory.calibration as calibration

    calls = []

    def measured(device, mode, precision, checkpointing, channels_last, *rest, **kwargs):
        calls.append((mode, precision, checkpointing, channels_last))
        key = calibration.calibration_key(device, mode, precision, checkpointing, channels_last)
        return calibration.Calibration(1.0, 20 * MiB, key, ((1, 2),), 300 * MiB)

    monkeypatch.setattr(calibration, "calibrate", measured)
    monkeypatch.setenv("MEDSEG_MEM_CACHE", str(tmp_path / "user-cache"))
    return calls


def test_calibration_is_measured_once_per_machine_not_per_folder_or_widths(tmp_path, monkeypatch, empty_cache):
    for folder, widths in (("one", "4,8"), ("two", "16,32,64")):
        (tmp_path / folder).mkdir()
        monkeypatch.chdir(tmp_path / folder)
        result = invoke("plan", "--shape", "1,32,32,32", "--classes", "3", "--channels", widths)
        assert result.exit_code == 0, result.output
        assert not (tmp_path / folder / "medseg-work").exists()
    assert empty_cache == [("inference", "fp32", False, True)]  # the second folder and widths reuse it
    cached = json.loads((tmp_path / "user-cache" / "calibration.json").read_text())
    assert [key.split("|")[-1] for key in cached] == ["inference-v4-fp32-channels-last"]


def test_the_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    from medseg_mem.memory.calibration_file import cache_file

    monkeypatch.delenv("MEDSEG_MEM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_file() == tmp_path / "xdg" / "medseg-mem" / "calibration.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_file() == tmp_path / "home" / ".cache" / "medseg-mem" / "calibration.json"


def test_tests_never_use_the_real_user_cache(calibration_cache):
    from medseg_mem.memory.calibration_file import cache_folder

    assert cache_folder() == calibration_cache and "pytest" in str(calibration_cache)


def test_a_plan_whose_lower_bound_is_over_the_budget_is_not_calibrated(tmp_path, empty_cache):
    result = invoke("plan", "--shape", "1,100000,100000,100000", "--classes", "3", "--variant", "full")
    assert result.exit_code == 0, result.output
    assert empty_cache == [] and ">=" in result.output and "lower bound" in result.output
