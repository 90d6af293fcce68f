"""The results CSV: schema, atomic append that keeps earlier rows, clear errors, reading back."""

from __future__ import annotations

import math
import os
import re
from datetime import datetime, timezone

import pytest

from hang_guard import HANG_GUARD_S
from medseg_mem.report import results as results_module
from medseg_mem.core.errors import MedsegError
from medseg_mem.report.results import (
    OPTIONAL_COLUMNS,
    RESULT_COLUMNS,
    append_rows,
    new_run_id,
    read_results,
    utc_timestamp,
)

FIX = "move it away or name another results CSV: run --results NEW.csv, compare NEW.csv"


def make_rows(variant="patch", dataset="Task04_Hippocampus", dice=(0.8, 0.7), source="run", **run):
    """Valid rows of one run: one per class, or one benchmark row when ``source == "benchmark"``."""
    base = dict(
        run_id=new_run_id(variant), timestamp=utc_timestamp(), dataset=dataset, variant=variant,
        peak_memory_bytes=123_456_789, memory_method="rss-above-baseline (isolated process)", device="cpu",
        inference_seconds_per_case=0.25, train_steps=20, train_seconds=3.5, seed=0, channels="8-16-32-64-128",
        loss="dice_ce", slab_size=16, downsample="", n_test_cases=2, package_version="0.1.0", source=source,
    )  # fmt: skip
    base.update(run)
    if source == "benchmark":
        return [dict(base, class_name="", class_index=-1, dice=None, planned_bytes=2e8, inferer="slab")]
    return [dict(base, class_name=f"class{i}", class_index=i, dice=d) for i, d in enumerate(dice, start=1)]


def test_append_creates_folder_and_file_with_header(tmp_path):
    path = tmp_path / "work" / "deeper" / "results.csv"
    assert append_rows(path, make_rows()) == path
    lines = path.read_text().splitlines()
    assert lines[0].split(",") == list(RESULT_COLUMNS)
    frame = read_results(path)
    assert list(frame.columns) == list(RESULT_COLUMNS)
    assert frame["dice"].tolist() == [0.8, 0.7]
    assert frame["planned_bytes"].isna().all() and (frame["inferer"] == "").all()


def test_append_keeps_earlier_rows_byte_for_byte(tmp_path):
    path = tmp_path / "results.csv"
    append_rows(path, make_rows("full", planner_error="a, quoted \"text\""))
    before = path.read_bytes()
    append_rows(path, make_rows("cascade"))
    after = path.read_bytes()
    assert after.startswith(before) and len(after) > len(before)
    frame = read_results(path)
    assert frame["variant"].tolist() == ["full", "full", "cascade", "cascade"]
    assert frame["planner_error"].iloc[0] == 'a, quoted "text"'


def test_append_to_file_without_final_newline_keeps_rows(tmp_path):
    path = tmp_path / "results.csv"
    append_rows(path, make_rows("full"))
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    append_rows(path, make_rows("patch"))
    assert read_results(path)["variant"].tolist() == ["full", "full", "patch", "patch"]


def test_older_file_without_optional_columns_gains_them(tmp_path):
    path = tmp_path / "results.csv"
    append_rows(path, make_rows("full"))
    old = read_results(path)[[c for c in RESULT_COLUMNS if c not in OPTIONAL_COLUMNS]]
    old.to_csv(path, index=False)
    append_rows(path, make_rows("patch", inferer="slab"))
    frame = read_results(path)
    assert frame["run_id"].tolist()[:2] == old["run_id"].tolist()
    assert frame["inferer"].tolist() == ["", "", "slab", "slab"]


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"this is not a csv\x00 at all\n", "missing column(s) run_id"),
        (b"a,b,c\n1,2,3\n", "missing column(s) run_id"),
        (b"\xff\xfe\x00binary", "not UTF-8"),
        (None, "record 4 has 2 fields"),  # header, two rows, then a ragged row
    ],
    ids=["garbage", "other-columns", "binary", "ragged"],
)
def test_malformed_existing_file_is_refused_and_untouched(tmp_path, content, reason):
    path = tmp_path / "results.csv"
    if content is None:
        append_rows(path, make_rows())
        content = path.read_bytes() + b"x,y\n"
    path.write_bytes(content)
    with pytest.raises(MedsegError) as error:
        append_rows(path, make_rows())
    message = str(error.value)
    assert str(path) in message and reason in message and FIX in message
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]


def test_row_with_missing_or_unknown_columns_is_named(tmp_path):
    path = tmp_path / "results.csv"
    row = make_rows()[0]
    del row["dice"], row["seed"]
    row["dcie"] = 0.5
    with pytest.raises(MedsegError, match=r"row 1: missing column\(s\) dice, seed; unknown column\(s\) dcie"):
        append_rows(path, [row])
    assert not path.exists()


def test_unknown_source_is_refused(tmp_path):
    with pytest.raises(MedsegError, match="source must be one of run, benchmark, peer; got 'training'"):
        append_rows(tmp_path / "results.csv", make_rows(source="training"))


def test_failed_replace_keeps_original_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "results.csv"
    append_rows(path, make_rows("full"))
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(results_module.os, "replace", broken_replace)
    with pytest.raises(OSError):
        append_rows(path, make_rows("patch"))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]


def test_keeps_file_permissions(tmp_path):
    path = tmp_path / "results.csv"
    append_rows(path, make_rows())
    os.chmod(path, 0o640)
    append_rows(path, make_rows())
    assert path.stat().st_mode & 0o777 == 0o640


def test_benchmark_rows_round_trip(tmp_path):
    path = append_rows(tmp_path / "results.csv", make_rows(source="benchmark", peak_memory_bytes=float("nan")))
    row = read_results(path).iloc[0]
    assert row["source"] == "benchmark" and row["class_name"] == "" and row["class_index"] == -1
    assert math.isnan(row["dice"]) and math.isnan(row["peak_memory_bytes"]) and row["planned_bytes"] == 2e8


def test_read_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(MedsegError, match=r"results file .*nope\.csv does not exist; run `medseg-mem run` first"):
        read_results(tmp_path / "nope.csv")


def test_read_empty_file(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("")
    with pytest.raises(MedsegError, match="is empty"):
        read_results(path)


def test_read_names_bad_numeric_cell(tmp_path):
    path = append_rows(tmp_path / "results.csv", make_rows(dice=(0.5,)))
    path.write_text(path.read_text().replace(",0.5,", ",high,"))
    with pytest.raises(MedsegError, match=r"column dice must hold numbers or be empty; line 2 has 'high'"):
        read_results(path)


def test_read_refuses_other_csv(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(MedsegError, match=FIX):
        read_results(path)


def test_new_run_id_is_unique_and_filesystem_safe():
    ids = {new_run_id("patch") for _ in range(20)}
    assert len(ids) == 20
    assert all(re.fullmatch(r"\d{8}T\d{6}Z-patch-[0-9a-f]{6}", i) for i in ids)
    assert re.fullmatch(r"[A-Za-z0-9._-]+", new_run_id("my variant/../x"))


def test_utc_timestamp_is_iso_8601_utc():
    before = datetime.now(timezone.utc).replace(microsecond=0)
    stamp = datetime.fromisoformat(utc_timestamp().replace("Z", "+00:00"))
    after = datetime.now(timezone.utc)
    assert stamp.utcoffset().total_seconds() == 0
    assert before <= stamp <= after  # the clock's time when called, however long the call took


def test_numpy_and_missing_values_are_written_plainly(tmp_path):
    numpy = pytest.importorskip("numpy")
    rows = make_rows(dice=(numpy.float64(0.25),), train_steps=numpy.int64(7), slab_size=None)
    text = append_rows(tmp_path / "results.csv", rows).read_text()
    assert ",0.25," in text and ",7," in text and "np." not in text
    assert read_results(tmp_path / "results.csv")["slab_size"].iloc[0] == ""


def _append_many(path, variant, times):
    for _ in range(times):
        append_rows(path, make_rows(variant))


def test_concurrent_appends_lose_no_rows(tmp_path):
    pytest.importorskip("fcntl")
    import multiprocessing

    path = tmp_path / "results.csv"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_append_many, args=(path, v, 15)) for v in ("full", "patch", "cascade")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=HANG_GUARD_S)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    counts = read_results(path)["variant"].value_counts().to_dict()
    assert counts == {"full": 30, "patch": 30, "cascade": 30}
