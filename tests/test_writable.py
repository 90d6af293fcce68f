"""Output locations are checked before the work starts; a write that fails midway keeps the previous file."""

from __future__ import annotations

import errno
import os
import tempfile

import pytest

from medseg_mem.core.files.atomic import WriteError, write_text_atomic
from medseg_mem.core.errors import MedsegError
from medseg_mem.report.results import RESULT_COLUMNS, append_rows
from medseg_mem.core.files.writable import check_output_file, check_output_folder

from disk_faults import install_full_disk


def refuse(*args, **kwargs):
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))


def test_a_missing_output_folder_is_created_and_left_empty(tmp_path):
    folder = check_output_folder(tmp_path / "a" / "b", "--out")
    assert folder.is_dir() and list(folder.iterdir()) == []


def test_an_unwritable_folder_names_the_option_the_path_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "mkstemp", refuse)  # what a read-only or foreign-owned folder does
    with pytest.raises(MedsegError) as error:
        check_output_folder(tmp_path / "runs", "--runs")
    message = str(error.value)
    assert message.startswith(f"--runs {tmp_path / 'runs'}: cannot write there (Permission denied)")
    assert "pass another --runs" in message and "\n" not in message


@pytest.mark.parametrize("where", ["itself", "parent"])
def test_a_file_where_a_folder_belongs_is_named(tmp_path, where):
    (tmp_path / "plain").write_text("x")
    folder = tmp_path / "plain" if where == "itself" else tmp_path / "plain" / "out"
    with pytest.raises(MedsegError, match="plain is a file, not a folder|plain: is a file, not a folder"):
        check_output_folder(folder, "--out")


def test_a_results_path_that_is_a_folder_is_refused(tmp_path):
    (tmp_path / "results.csv").mkdir()
    with pytest.raises(MedsegError, match=r"--results .*results.csv: is a folder, not a file"):
        check_output_file(tmp_path / "results.csv", "--results")
    assert check_output_file(tmp_path / "new" / "r.csv", "--results") == tmp_path / "new" / "r.csv"


def half_writes(monkeypatch):
    """Files opened for writing by the atomic writer take half the text, then the disk is full."""
    install_full_disk(monkeypatch)


def row(run_id="r1"):
    return {**{column: "" for column in RESULT_COLUMNS}, "run_id": run_id, "source": "run", "dice": 0.5}


def test_a_results_append_that_fails_midway_keeps_the_previous_csv(tmp_path, monkeypatch):
    path = append_rows(tmp_path / "results.csv", [row("r1")])
    before = path.read_bytes()
    half_writes(monkeypatch)
    with pytest.raises(WriteError) as error:
        append_rows(path, [row("r2")])
    assert isinstance(error.value, OSError) and isinstance(error.value, MedsegError)
    assert str(error.value).startswith(f"cannot write {path}: No space left on device; the previous results.csv")
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]


def test_a_new_file_that_cannot_be_written_says_it_was_not_created(tmp_path, monkeypatch):
    half_writes(monkeypatch)
    with pytest.raises(WriteError, match="notes.txt was not created"):
        write_text_atomic(tmp_path / "notes.txt", "hello")
    assert list(tmp_path.iterdir()) == []
