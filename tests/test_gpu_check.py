"""``benchmarks/gpu_check.py`` without a GPU: its options, its size list, the stage inputs it measures, the rows it
builds (plan against the reserved peak, skips), and its one line when there is no CUDA device. The measurement
itself is replaced by a stand-in here; on a GPU it is :func:`medseg_mem.memory.measure.measure_peak`."""

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", BENCHMARKS / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_sizes_are_the_ones_the_docs_quote(gpu_check):
    assert gpu_check.SIZES == {"brats": ((4, 240, 240, 155), 4), "liver": ((1, 512, 512, 208), 3)}
    args = gpu_check.parse_args([])
    assert args.sizes == ["brats", "liver"] and args.variants == ["full", "patch", "cascade"]
    assert args.train_configs == ["fp32", "bf16+ckpt"] and args.parts == ["inference", "training", "hippocampus"]
    assert args.minutes == 8 and args.hippocampus_minutes == 5


@pytest.mark.parametrize("argv, says", [
    (["--sizes", "kidney"], "--sizes: kidney is not one of brats, liver"),
    (["--parts", ""], "--parts: nothing is not one of"),
    (["--train-configs", "fp8"], "--train-configs: fp8 is not one of"),
    (["--minutes", "0"], "--minutes and --hippocampus-minutes must be positive"),
])  # fmt: skip
def test_bad_options_are_one_line_errors(gpu_check, capsys, argv, says):
    with pytest.raises(SystemExit) as stop:
        gpu_check.parse_args(argv)
    assert stop.value.code == 2 and says in capsys.readouterr().err


def test_each_variant_is_measured_at_its_stages_own_inputs(gpu_check):
    brats = gpu_check.SIZES["brats"][0]
    assert gpu_check.stage_inputs("full", brats, 4) == [("full", (1, 4, 240, 240, 155))]
    assert gpu_check.stage_inputs("patch", brats, 4) == [("patch", (1, 4, 240, 240, 16))]
    (_, low), (_, slab) = gpu_check.stage_inputs("cascade", brats, 4)
    assert low[1] == 4 and low[2:] == (72, 72, 46)  # 0.3 of 240x240x155
    assert slab == (1, 4 + 3, 240, 240, 16)  # image + one guidance channel per foreground class


def test_the_plan_is_set_against_the_reserved_peak_with_the_planner_benchmarks_verdict(gpu_check):
    def row(planned):
        return gpu_check.memory_row("inference", "brats", "full", "fp32", "", 90, 100, planned, 0.5, "cuda", "X")

    assert (row(110)["plan_error"], row(110)["verdict"]) == (0.1, "ok")
    assert (row(94)["verdict"], row(96)["verdict"], row(116)["verdict"]) == ("MISS", "ok", "MISS")
    measured = row(110)
    assert measured["shape"] == "4x240x240x155" and measured["peak_allocated_bytes"] == 90
    assert set(measured) == set(gpu_check.COLUMNS) and measured["status"] == "measured"


class FakeMeasure:
    """Stands in for :func:`measure_pair`: records what was measured; reserved bytes grow with the input."""

    def __init__(self):
        self.calls = []

    def __call__(self, setup, args, device, grad):
        shape = args[0]
        self.calls.append((setup.__name__, tuple(shape), device, grad))
        voxels = int(pd.Series(shape).prod())
        return voxels, 2 * voxels, 0.25


@pytest.fixture()
def tiny(gpu_check, monkeypatch):
    """gpu_check with one tiny size and the stand-in measurement."""
    monkeypatch.setitem(gpu_check.SIZES, "tiny", ((1, 64, 64, 64), 3))
    fake = FakeMeasure()
    monkeypatch.setattr(gpu_check, "measure_pair", fake)
    args = gpu_check.parse_args(["--inference-precisions", "fp32", "--train-configs", "fp32,bf16+ckpt"])
    return gpu_check, args, fake


def test_inference_rows_plan_on_the_device_and_compare(tiny):
    gpu_check, args, fake = tiny
    rows = list(gpu_check.inference_rows(args, "tiny", lambda config: None, 2**40, "cpu", "none"))
    assert [r["variant"] for r in rows] == ["full", "patch", "cascade"]
    assert [c[0] for c in fake.calls] == ["variant_setup"] * 3 and not any(c[3] for c in fake.calls)
    for row in rows:
        plan = gpu_check.planned(row["variant"], (1, 64, 64, 64), 3, "inference", "fp32", "cpu")
        assert row["planned_bytes"] == plan.predicted_bytes > 0
        assert row["plan_error"] == round((plan.predicted_bytes - row["peak_reserved_bytes"])
                                          / row["peak_reserved_bytes"], 4)  # fmt: skip


def test_training_rows_measure_every_stage_and_keep_the_worst(tiny):
    gpu_check, args, fake = tiny
    rows = list(gpu_check.training_rows(args, "tiny", lambda config: None, 2**40, "cpu", "none"))
    assert [(r["variant"], r["config"]) for r in rows] == [
        (v, c) for c in ("fp32", "bf16+ckpt") for v in ("full", "patch", "cascade")]
    assert all(c[0] == "timed_step_setup" and c[3] for c in fake.calls)
    cascade = [c[1] for c in fake.calls][2:4]  # full, patch, then the cascade's two stages
    assert cascade == [shape for _, shape in gpu_check.stage_inputs("cascade", (1, 64, 64, 64), 3)]
    worst = max(cascade, key=lambda shape: int(pd.Series(shape).prod()))
    assert rows[2]["stage"] == ("stage2" if worst == cascade[1] else "stage1")
    fp32, ckpt = rows[0]["planned_bytes"], rows[3]["planned_bytes"]
    assert ckpt < fp32  # the planner's bf16 + checkpointing figure is below fp32's


def test_a_row_whose_plan_exceeds_the_free_memory_is_skipped_not_run(tiny):
    gpu_check, args, fake = tiny
    rows = list(gpu_check.training_rows(args, "tiny", lambda config: None, 1000, "cpu", "none"))
    assert all(r["status"].startswith("skipped: planned > 85% of 1000 free bytes") for r in rows)
    assert not fake.calls and "skipped" in gpu_check.summary_line(rows[0])


def test_rows_are_appended_under_one_header(gpu_check, tmp_path):
    path = tmp_path / "rows.csv"
    row = gpu_check.memory_row("training", "brats", "cascade", "bf16+ckpt", "stage2", 1, 2, 2, 0.1, "cuda", "X")
    gpu_check.append_row(path, row)
    gpu_check.append_row(path, row)
    table = pd.read_csv(path)
    assert list(table.columns) == list(gpu_check.COLUMNS) and len(table) == 2
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(SystemExit, match="has other columns"):
        gpu_check.append_row(tmp_path / "other.csv", row)


def test_hippocampus_rows_give_the_new_runs_mean_foreground_dice(gpu_check, tmp_path):
    results = tmp_path / "hippocampus_cuda.csv"
    pd.DataFrame({"run_id": ["old", "new", "new", "new"], "variant": ["full"] * 4, "class_index": [1, 0, 1, 2],
                  "dice": [0.1, 0.99, 0.8, 0.9], "peak_memory_bytes": [5] * 4, "process_peak_bytes": [7] * 4,
                  "train_steps": [900] * 4, "budget_seconds": [None] * 4}).to_csv(results, index=False)  # fmt: skip
    (row,) = gpu_check.hippocampus_rows(results, {"old"}, 301.0, "cuda", "X")
    assert (row["mean_dice"], row["steps"], row["stage"], row["peak_reserved_bytes"]) == (85.0, 900, "new", 7)


def test_without_a_gpu_it_says_so_in_one_line(gpu_check, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as stop:
        gpu_check.main(["--parts", "inference"])
    out = capsys.readouterr().out
    assert stop.value.code == 2 and out.count("\n") == 1 and "no CUDA device" in out
