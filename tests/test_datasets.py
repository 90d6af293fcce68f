"""Runs belong to a dataset: the fingerprint in run.json and the results CSV, ``compare`` per dataset (best run by
validation Dice, ``--latest``, ``--runs``), and ``predict --variant`` that never picks another task's run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from medseg_mem.cli import main
from medseg_mem.data.fingerprint import fingerprint, fingerprint_of
from medseg_mem.data.prepared import PreparedDataset
from medseg_mem.memory.measure import MemoryReading
from medseg_mem.report import compare
from medseg_mem.report.results import append_rows, read_results
from tests.test_report import run_rows

TINY = ["--steps", "2", "--val-every", "1", "--channels", "2,4", "--quiet"]


def test_fingerprint_follows_what_defines_the_dataset_only():
    split = {"train": ["a", "b"], "val": ["c"], "test": ["d"]}
    base = fingerprint_of("Rods", ["MRI"], ["background", "rod"], {"spacing": None}, split)
    reordered = {"train": ["b", "a"], "val": ["c"], "test": ["d"]}
    assert fingerprint_of("Rods", ["MRI"], ["background", "rod"], {"spacing": None}, reordered) == base
    assert len(base) == 12 and int(base, 16) >= 0
    moved = {"train": ["a"], "val": ["b", "c"], "test": ["d"]}
    others = [fingerprint_of("Hippo", ["MRI"], ["background", "rod"], {"spacing": None}, split),
              fingerprint_of("Rods", ["CT"], ["background", "rod"], {"spacing": None}, split),
              fingerprint_of("Rods", ["MRI"], ["background", "tube"], {"spacing": None}, split),
              fingerprint_of("Rods", ["MRI"], ["background", "rod"], {"spacing": [1, 1, 1]}, split),
              fingerprint_of("Rods", ["MRI"], ["background", "rod"], {"spacing": None}, moved)]  # fmt: skip
    assert len({base, *others}) == 6


@pytest.fixture(scope="module")
def two_datasets(prepared_default, tiny_prepared, tmp_path_factory):
    """A work folder (``MEDSEG_MEM_HOME``) whose prepared dataset is the rods task, with one ``full`` run on it and,
    newer, one on another task (3 classes of 8x8x20): both in one runs folder and one results CSV."""
    home = tmp_path_factory.mktemp("home")
    (home / "prepared").symlink_to(prepared_default, target_is_directory=True)
    args = ["--results", str(home / "results.csv"), "--runs", str(home / "runs"), "--variant", "full", *TINY]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("medseg_mem.runner.run.measure_variant_memory",
                      lambda *a, **k: MemoryReading(0, "stub", "cpu"))  # fmt: skip
        for data in (prepared_default, tiny_prepared.root):
            result = CliRunner().invoke(main, ["run", "--data", str(data), *args])
            assert result.exit_code == 0, result.output
    runs = sorted((home / "runs").iterdir())  # run ids begin with their start time: rods first
    return home, runs


def test_each_run_records_its_datasets_fingerprint(two_datasets, prepared_default, tiny_prepared):
    home, (rods_run, other_run) = two_datasets
    expected = [fingerprint(PreparedDataset.open(prepared_default)), fingerprint(tiny_prepared)]
    assert expected[0] != expected[1]
    assert [json.loads((run / "run.json").read_text())["dataset_fingerprint"] for run in (rods_run, other_run)] \
        == expected  # fmt: skip
    rows = read_results(home / "results.csv")
    by_run = rows.groupby("run_id")["dataset_fingerprint"].unique()
    assert [list(by_run[run.name]) for run in (rods_run, other_run)] == [[expected[0]], [expected[1]]]
    assert rows["val_dice"].between(0, 1).all()


def test_compare_shows_one_table_per_dataset(two_datasets, tmp_path):
    home, (rods_run, other_run) = two_datasets
    result = CliRunner().invoke(main, ["compare", str(home / "results.csv"), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rods_digest = json.loads((rods_run / "run.json").read_text())["dataset_fingerprint"]
    assert f"## SyntheticRods [{rods_digest}]" in result.output
    assert result.output.count("## ") == 2


@pytest.mark.parametrize("variant", ["full", "auto"])
def test_predict_variant_picks_the_run_of_the_scans_dataset(two_datasets, prepared_default, tmp_path, variant):
    home, (rods_run, other_run) = two_datasets
    manifest = json.loads((prepared_default / "manifest.json").read_text())
    scan = Path(manifest["source"]) / manifest["cases"][0]["image"]
    result = CliRunner(env={"MEDSEG_MEM_HOME": str(home)}).invoke(
        main, ["predict", str(scan), "--variant", variant, "--out", str(tmp_path), "--quiet", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith(f"--variant {variant}:"))
    assert f"run {rods_run.name}" in line and other_run.name not in line
    assert "skipped 1 run(s): 1 of another dataset (Tiny [" in line
    assert "the prepared dataset in" in line


def test_predict_dataset_option_and_channels_filter(two_datasets, prepared_default):
    from medseg_mem.core.errors import MedsegError
    from medseg_mem.predict.candidates import candidates

    home, (rods_run, other_run) = two_datasets
    other = json.loads((other_run / "run.json").read_text())["dataset_fingerprint"]
    found = candidates(home / "runs", 1, home / "results.csv", dataset=other)
    assert found.runs["full"][0] == other_run and "(--dataset)" in found.note
    with pytest.raises(MedsegError, match=r"none of its 2 finished run\(s\) fits these scans \(2 run\(s\): 2 with 1 "
                                          r"channel\(s\) where the scans have 2\)"):  # fmt: skip
        candidates(home / "runs", 2, home / "results.csv")


def test_predict_skips_runs_of_datasets_missing_from_the_results_csv(two_datasets, tmp_path):
    from medseg_mem.predict.candidates import candidates

    home, (rods_run, other_run) = two_datasets
    rows = read_results(home / "results.csv")
    only_other = tmp_path / "other.csv"
    only_other.write_text(rows[rows.run_id == other_run.name].to_csv(index=False))
    found = candidates(home / "runs", 1, only_other)
    assert found.runs["full"][0] == other_run
    assert "1 of a dataset with no runs in" in found.note


@pytest.fixture
def repeated_runs(tmp_path):
    """One dataset, three ``full`` runs: the oldest with the best validation Dice; plus a row of an older CSV
    (no fingerprint, no validation Dice)."""
    rows = []
    for minute, val in enumerate((0.95, 0.60, 0.80)):
        rows += run_rows("Task01_BrainTumour", "full", (0.8, 0.6), 2**30, 1.0, f"2024-01-01T00:0{minute}:00Z",
                         dataset_fingerprint="aaaaaaaaaaaa", val_dice=val)  # fmt: skip
    rows += run_rows("Task01_BrainTumour", "full", (0.1, 0.1), 2**30, 1.0, "2024-01-02T00:00:00Z")
    return append_rows(tmp_path / "results.csv", rows)


def test_compare_shows_the_best_run_by_validation_dice_the_latest_or_those_named(repeated_runs, tmp_path):
    best = compare(repeated_runs, tmp_path / "best")
    assert "## Task01_BrainTumour [aaaaaaaaaaaa]" in best.text
    assert "## Task01_BrainTumour [unknown dataset]" in best.text
    assert "full: 3 runs; the best by validation Dice (2024-01-01T00:00:00Z-full-cpu, 95.0 %) is shown." in best.text
    assert "each row is the best run of its variant by validation Dice" in best.markdown_path.read_text()
    latest = CliRunner().invoke(main, ["compare", str(repeated_runs), "--out", str(tmp_path), "--latest"])
    assert "full: 3 runs; the latest (2024-01-01T00:02:00Z-full-cpu, 2024-01-01T00:02:00Z) is shown." in latest.output
    named = CliRunner().invoke(main, ["compare", str(repeated_runs), "--out", str(tmp_path),
                                      "--runs", "2024-01-01T00:01:00Z-full-cpu"])  # fmt: skip
    assert named.exit_code == 0, named.output
    assert "2024-01-01T00:01:00Z-full-cpu" in named.output and "unknown dataset" not in named.output
    unknown = CliRunner().invoke(main, ["compare", str(repeated_runs), "--out", str(tmp_path), "--runs", "nope"])
    assert unknown.exit_code != 0 and "--runs: no run nope in the results" in unknown.output


def test_an_older_csv_without_the_new_columns_still_reads(tmp_path):
    rows = run_rows("Task01_BrainTumour", "full", (0.8, 0.6), 2**30, 1.0, "2024-01-01T00:00:00Z")
    path = append_rows(tmp_path / "new.csv", rows)
    frame = read_results(path).drop(columns=["dataset_fingerprint", "val_dice"])
    old = tmp_path / "old.csv"
    old.write_text(frame.to_csv(index=False))
    assert "## Task01_BrainTumour [unknown dataset]" in compare(old, tmp_path).text
