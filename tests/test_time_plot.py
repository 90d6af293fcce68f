"""``compare`` and snapshot rows: Dice against training time in comparison-time.png, final models in the tables."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from medseg_mem.cli import main
from medseg_mem.report import compare
from medseg_mem.report.ranking import accuracy_order
from medseg_mem.report.results import append_rows, read_results
from medseg_mem.report.tables import build_groups
from medseg_mem.report.time_plot import curve_points

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DATASET = "Hippocampus"


def rows(variant, dice, seconds, budget=None, run_id=None, timestamp="2026-01-01T00:00:00Z", device="cpu"):
    """The rows of one evaluated model (two foreground classes, both at ``dice``)."""
    base = dict(
        run_id=run_id or f"run-{variant}", timestamp=timestamp, dataset=DATASET, variant=variant,
        peak_memory_bytes=100 * 2**20, memory_method="proc", device=device, inference_seconds_per_case=0.1,
        train_steps=int(seconds), train_seconds=seconds, seed=0, channels="8-16", loss="dice_ce", slab_size="",
        downsample="", n_test_cases=3, package_version="0.1.0", source="run", budget_seconds=budget,
        time_limit_seconds=900,
    )  # fmt: skip
    return [dict(base, class_index=i, class_name=name, dice=dice) for i, name in ((1, "Anterior"), (2, "Posterior"))]


def flat(points):
    return [value for point in points for value in point]


@pytest.fixture
def curves_csv(tmp_path):
    """``full`` and ``cascade`` trained 15 min with snapshots at 5 and 10 min; an older ``full`` run without."""
    table = rows("full", 0.70, 1000.0, run_id="old-full", timestamp="2025-01-01T00:00:00Z")
    for variant, dice in (("full", (0.80, 0.85, 0.88)), ("cascade", (0.75, 0.82, 0.86))):
        table += rows(variant, dice[2], 903.0)  # the final model: no budget_seconds
        table += rows(variant, dice[0], 301.0, budget=300) + rows(variant, dice[1], 602.0, budget=600)
    return append_rows(tmp_path / "results.csv", table)


def test_compare_draws_dice_against_training_time_when_there_are_snapshots(curves_csv, tmp_path):
    report = compare(curves_csv, tmp_path / "report")
    assert report.time_png_path == tmp_path / "report" / "comparison-time.png"
    assert report.time_png_path.read_bytes().startswith(PNG_MAGIC)
    assert "![mean Dice against training time](comparison-time.png)" in report.markdown_path.read_text()


def test_compare_draws_no_time_plot_without_snapshot_rows(tmp_path):
    path = append_rows(tmp_path / "results.csv", rows("full", 0.8, 900.0) + rows("patch", 0.7, 900.0))
    report = compare(path, tmp_path / "report")
    assert report.time_png_path is None and not (tmp_path / "report" / "comparison-time.png").exists()
    assert "training time" not in report.markdown_path.read_text()


def test_each_variant_line_goes_through_its_snapshots_and_final_model(curves_csv):
    curves = curve_points(read_results(curves_csv))
    assert list(curves) == [(DATASET, "cpu")]
    lines = curves[(DATASET, "cpu")]
    assert flat(lines["full"]) == pytest.approx([301 / 60, 0.80, 602 / 60, 0.85, 903 / 60, 0.88])
    assert flat(lines["cascade"]) == pytest.approx([301 / 60, 0.75, 602 / 60, 0.82, 903 / 60, 0.86])


def test_a_variant_without_snapshots_is_plotted_from_all_its_runs(curves_csv):
    """Rows filed by another tool (any source) for one model per training time still make a line."""
    append_rows(curves_csv, rows("other", 0.6, 300.0, run_id="o5") + rows("other", 0.8, 900.0, run_id="o15"))
    lines = curve_points(read_results(curves_csv))[(DATASET, "cpu")]
    assert flat(lines["other"]) == pytest.approx([5.0, 0.6, 15.0, 0.8])


def test_tables_and_the_auto_ranking_show_final_models_only(curves_csv):
    (group,) = build_groups(read_results(curves_csv))
    table = group.table.set_index("variant")
    assert table.loc["full", "mean_dice"] == pytest.approx(0.88) and table.loc["full", "n_runs"] == 2
    assert table.loc["cascade", "mean_dice"] == pytest.approx(0.86) and table.loc["cascade", "n_runs"] == 1
    order, why = accuracy_order(curves_csv, DATASET)
    assert order[:2] == ["cascade", "full"] and "cascade 86.00" in why  # full: mean of 70 and 88 %


def test_the_compare_command_says_it_wrote_the_time_plot(curves_csv, tmp_path):
    result = CliRunner().invoke(main, ["compare", str(curves_csv), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert f"wrote {tmp_path / 'out' / 'comparison-time.png'}" in result.output
    assert "| full " in result.output and "88.00" in result.output and "80.00" not in result.output


def test_an_older_results_csv_without_the_new_columns_still_reads(tmp_path):
    path = tmp_path / "old.csv"
    columns = [c for c in rows("full", 0.8, 900.0)[0] if c not in ("budget_seconds", "time_limit_seconds")]
    path.write_text(",".join(columns) + "\n" + "\n".join(",".join(str(r[c]) for c in columns)
                                                          for r in rows("full", 0.8, 900.0)) + "\n")  # fmt: skip
    table = read_results(path)
    assert table["budget_seconds"].isna().all() and len(build_groups(table)) == 1
    append_rows(path, rows("full", 0.7, 300.0, budget=300, run_id="new"))
    assert read_results(path)["budget_seconds"].fillna(-1).tolist() == [-1, -1, 300, 300]
