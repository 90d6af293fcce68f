"""The comparison report: thesis-style tables per dataset/device group, CSV, Markdown and the plot."""

from __future__ import annotations

import pandas as pd
import pytest

from medseg_mem.core.errors import MedsegError
from medseg_mem.core import units
from medseg_mem.report import compare, format_bytes, format_table
from medseg_mem.report.format import format_size
from medseg_mem.report.tables import build_groups
from medseg_mem.report.results import RESULT_COLUMNS, append_rows, read_results

CPU = "rss-above-baseline (isolated process)"
CUDA = "torch.cuda.max_memory_allocated"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: dataset -> variant -> (Dice per class, peak memory bytes, seconds per case); appended in a scrambled order.
DICE = {
    "Task01_BrainTumour": {"cascade": ((0.77, 0.57), 2.8 * 2**30, 0.91), "full": ((0.80, 0.61), 21.5 * 2**30, 0.35),
                           "patch": ((0.70, 0.31), 2.9 * 2**30, 0.67)},
    "Task03_Liver": {"patch": ((0.87, 0.22), 10.6 * 2**30, 4.49), "cascade": ((0.92, 0.25), 12.4 * 2**30, 5.9),
                     "full": ((0.60, 0.10), 40 * 2**30, 1.0)},
}  # fmt: skip
CLASSES = {"Task01_BrainTumour": ("edema", "enhancing tumor"), "Task03_Liver": ("liver", "cancer")}


def run_rows(dataset, variant, dice, memory, seconds, timestamp, device="cpu", method=CPU, classes=None, **extra):
    """Rows of one run (one per class) with the given numbers."""
    classes = classes or [(i, name) for i, name in enumerate(CLASSES[dataset], start=1)]
    base = dict(
        run_id=f"{timestamp}-{variant}-{device}", timestamp=timestamp, dataset=dataset, variant=variant,
        peak_memory_bytes=memory, memory_method=method, device=device, inference_seconds_per_case=seconds,
        train_steps=100, train_seconds=5.0, seed=0, channels="8-16-32-64-128", loss="dice_ce", slab_size=16,
        downsample=2, n_test_cases=3, package_version="0.1.0", source="run",
    )  # fmt: skip
    base.update(extra)
    return [dict(base, class_index=i, class_name=name, dice=d) for (i, name), d in zip(classes, dice)]


def benchmark_row(variant, memory, seconds, slab_size=16, dataset="Task01_BrainTumour", timestamp="2024-02-01T00:00Z"):
    """One benchmark row (memory and time only)."""
    row = run_rows(dataset, variant, [None], memory, seconds, timestamp, slab_size=slab_size, source="benchmark",
                   classes=[(-1, "")], planned_bytes=memory * 1.1, planner_error=0.1, inferer="SlabInferer")
    return row[0]


@pytest.fixture
def results_csv(tmp_path):
    """Two datasets x three variants x two classes, all on the CPU."""
    rows = []
    for minute, (dataset, variants) in enumerate(DICE.items()):
        for second, (variant, (dice, memory, seconds)) in enumerate(variants.items()):
            rows += run_rows(dataset, variant, dice, memory, seconds, f"2024-01-01T00:0{minute}:0{second}Z")
    return append_rows(tmp_path / "results.csv", rows)


def test_one_table_per_dataset_with_variants_in_order_and_mean_dice(results_csv):
    groups = build_groups(read_results(results_csv))
    assert [(g.dataset, g.device, g.source) for g in groups] == [
        ("Task01_BrainTumour", "cpu", "run"), ("Task03_Liver", "cpu", "run")]  # fmt: skip
    for group in groups:
        table = group.table
        assert table["variant"].tolist() == ["full", "patch", "cascade"]
        assert group.classes == CLASSES[group.dataset]
        for row in table.itertuples():
            dice = DICE[group.dataset][row.variant][0]
            assert row.mean_dice == pytest.approx(sum(dice) / len(dice))
        assert table["n_runs"].tolist() == [1, 1, 1]


def test_format_table_shows_percent_dice_and_human_memory(results_csv):
    text = format_table(read_results(results_csv).query("dataset == 'Task01_BrainTumour'"))
    assert text.startswith("## Task01_BrainTumour [unknown dataset] — cpu, " + CPU)
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["full", "patch", "cascade"]
    assert "Dice % edema" in lines[0] and "Dice % enhancing tumor" in lines[0]
    full = lines[2]
    assert "80.00" in full and "61.00" in full and "70.50" in full and "21.5 GiB" in full and "0.35" in full
    assert "Task03_Liver" not in text


def test_latest_run_is_shown_and_counted(results_csv):
    rows = run_rows("Task03_Liver", "patch", (0.1, 0.1), 2**30, 1.0, "2023-12-31T00:00:00Z")  # older
    rows += run_rows("Task03_Liver", "patch", (0.5, 0.3), 2**30, 1.0, "2024-03-01T00:00:00Z")  # newest
    append_rows(results_csv, rows)
    liver = [g for g in build_groups(read_results(results_csv)) if g.dataset == "Task03_Liver"][0]
    patch = liver.table.set_index("variant").loc["patch"]
    assert patch["mean_dice"] == pytest.approx(0.4) and patch["n_runs"] == 3
    assert any("patch: 3 runs; the latest (2024-03-01" in note for note in liver.notes)


def test_background_class_is_not_in_the_mean(tmp_path):
    classes = [(0, "background"), (1, "liver"), (2, "cancer")]
    rows = run_rows("Task03_Liver", "patch", (0.99, 0.8, 0.4), 2**30, 1.0, "2024-01-01T00:00:00Z", classes=classes)
    table = build_groups(read_results(append_rows(tmp_path / "r.csv", rows)))[0].table
    assert table["mean_dice"].iloc[0] == pytest.approx(0.6)


def test_devices_and_memory_methods_are_never_mixed(results_csv):
    append_rows(results_csv, run_rows("Task01_BrainTumour", "patch", (0.7, 0.3), 3 * 2**30, 0.1,
                                      "2024-01-02T00:00:00Z", device="cuda", method=CUDA))  # fmt: skip
    groups = build_groups(read_results(results_csv))
    brain = [g for g in groups if g.dataset == "Task01_BrainTumour"]
    assert [(g.device, g.memory_method) for g in brain] == [("cpu", CPU), ("cuda", CUDA)]
    assert brain[1].table["variant"].tolist() == ["patch"]
    assert all(any(note.startswith("WARNING: Task01_BrainTumour has run results on 2") for note in g.notes)
               for g in brain)  # fmt: skip
    text = format_table(read_results(results_csv))
    assert "## Task01_BrainTumour [unknown dataset] — cuda, " + CUDA in text and text.count("> WARNING") == 2


def test_benchmark_rows_form_their_own_table(results_csv):
    append_rows(results_csv, [benchmark_row("patch", 50 * 2**20, 0.03, slab_size=8),
                              benchmark_row("patch", 90 * 2**20, 0.02, slab_size=16),
                              benchmark_row("full", 400 * 2**20, 0.01, slab_size="")])  # fmt: skip
    groups = build_groups(read_results(results_csv))
    bench = [g for g in groups if g.source == "benchmark"]
    assert len(bench) == 1 and bench[0].table["variant"].tolist() == ["full", "patch", "patch"]
    assert bench[0].table["slab_size"].tolist() == ["", "8", "16"]
    text = format_table(read_results(results_csv))
    section = text[text.index("benchmark (memory and time only)"):]
    assert " planned |" in section and " planner error |" in section and "SlabInferer" in section
    assert "440 MiB" in section and "Dice" not in section


def test_compare_writes_markdown_csv_and_png(results_csv, tmp_path):
    append_rows(results_csv, [benchmark_row("patch", 50 * 2**20, 0.03)])
    report = compare(results_csv, tmp_path / "report")
    assert report.markdown_path == tmp_path / "report" / "comparison.md"
    markdown = report.markdown_path.read_text()
    assert "## Task01_BrainTumour" in markdown and "## Task03_Liver" in markdown and report.text in markdown
    table = pd.read_csv(report.csv_path)
    assert {"dataset", "device", "memory_method", "variant", "mean_dice", "dice_edema", "peak_memory_bytes"} <= set(
        table.columns
    )
    brain_full = table.query("dataset == 'Task01_BrainTumour' and variant == 'full' and source == 'run'")
    assert brain_full["mean_dice"].item() == pytest.approx(0.705)
    assert brain_full["peak_memory_bytes"].item() == pytest.approx(21.5 * 2**30)
    png = report.png_path.read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000


def test_compare_defaults_to_the_results_folder(results_csv):
    report = compare(results_csv)
    assert report.png_path.parent == results_csv.parent and report.png_path.exists()


def test_compare_with_only_benchmark_rows(tmp_path):
    path = append_rows(tmp_path / "r.csv", [benchmark_row("cascade", 2**30, 0.5)])
    report = compare(path)
    assert "benchmark" in report.text and report.png_path.read_bytes().startswith(PNG_MAGIC)


def test_compare_without_rows_is_an_error(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text(",".join(RESULT_COLUMNS) + "\n")
    with pytest.raises(MedsegError, match="has no rows yet"):
        compare(path)


def test_compare_refuses_a_file_as_out_dir(results_csv, tmp_path):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(MedsegError, match="--out .*taken is a file"):
        compare(results_csv, tmp_path / "taken")


def test_format_table_of_nothing_and_of_the_wrong_frame(results_csv):
    assert format_table(read_results(results_csv).query("dataset == 'nope'")) == "No results to compare."
    with pytest.raises(MedsegError, match="lacks column"):
        format_table(pd.DataFrame({"x": [1]}))


@pytest.mark.parametrize(
    "value, text",
    [(512, "512 B"), (1536, "1.50 KiB"), (1.23 * 2**30, "1.23 GiB"), (21.5 * 2**30, "21.5 GiB"),
     (325 * 2**30, "325 GiB"), (float("nan"), "—"), (None, "—")],
)  # fmt: skip
def test_format_size(value, text):
    assert format_size(value) == text


def test_the_report_prints_sizes_with_the_one_formatter():
    assert format_bytes is units.format_bytes
