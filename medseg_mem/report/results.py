"""The results CSV: its schema, an atomic append that never loses earlier rows, and reading it back.

The file is tidy (long): one row per (run, class), the run-level columns repeated on each of a run's rows.
Benchmark rows (``source == "benchmark"``) measure memory and time only: ``dice`` empty, ``class_name`` empty and
``class_index`` -1. A run row's ``dice`` is the mean over the test cases that score the class; a case where
the class is absent from both the ground truth and the prediction does not (docs/method.md), ``dice_cases`` says
how many did, and ``dice`` is empty when none did. Reading checks every number's range (a Dice in [0, 1], byte
counts and times >= 0). Snapshot rows (``run --snapshots``) hold the test Dice of a run's best checkpoint at a
training-time mark: ``budget_seconds`` is the mark (empty on a run's final rows, :func:`final_rows`) and
``train_steps`` / ``train_seconds`` what had been trained by then. Peer rows (``source == "peer"``) are runs of
another tool (nnU-Net, a MONAI tutorial U-Net) on medseg-mem's split and budget, filed by
``benchmarks/peer_*.py`` like a run's. ``train_peak_memory_bytes`` is the memory training added at its peak
(CPU: resident memory; CUDA: memory reserved), a run's largest over its stages. ``process_peak_bytes`` and
``train_process_peak_bytes`` are the whole process at those peaks (Python, torch and MONAI included: the figure
``free``/``top`` show), ``planned_process_bytes`` / ``train_planned_process_bytes`` the planner's figures for them
and ``planned_bytes`` its figure for ``peak_memory_bytes``; rows written before they existed leave them empty.
``dataset_fingerprint`` is the prepared dataset's (:mod:`medseg_mem.data.fingerprint`: runs are compared and
picked per dataset) and ``val_dice`` the mean foreground validation Dice of the run's final stage's best
checkpoint (what ``compare`` picks a variant's best run by); rows written before them leave them empty.
``init_from`` names the run a fine-tuned run (``run --init-from``) started from; empty for a run from random weights.
pandas is imported only by :func:`read_results`, so the CLI stays quick to start.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import numbers
import os
import re
import secrets
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, List, Mapping, Sequence

from medseg_mem.core.files.atomic import write_text_atomic
from medseg_mem.core.errors import MedsegError

if TYPE_CHECKING:  # pragma: no cover
    import pandas

#: The whole process's peak (what ``top`` shows; ``peak_memory_bytes`` is what the inference added to it), measured
#: and planned, for the inference and the training.
PROCESS_COLUMNS = ("process_peak_bytes", "train_process_peak_bytes", "planned_process_bytes",
                   "train_planned_process_bytes")  # fmt: skip
RESULT_COLUMNS = (
    "run_id", "timestamp", "dataset", "variant", "class_name", "class_index", "dice",
    "peak_memory_bytes", "memory_method", "device", "inference_seconds_per_case", "train_steps", "train_seconds",
    "seed", "channels", "loss", "slab_size", "downsample", "n_test_cases", "package_version", "source",
    "planned_bytes", "planner_error", "inferer", "precision", "checkpointing", "channels_last",
    "inference_precision", "overlap", "sw_batch_size", "budget_seconds", "time_limit_seconds",
    "deep_supervision", "tta", "optimizer", "augment", "foreground_oversample", "train_peak_memory_bytes",
    "stage2_guidance", "dice_cases", *PROCESS_COLUMNS, "dataset_fingerprint", "val_dice", "init_from",
)  # fmt: skip
OPTIONAL_COLUMNS = (
    "planned_bytes", "planner_error", "inferer", "precision", "checkpointing", "channels_last",
    "inference_precision", "overlap", "sw_batch_size", "budget_seconds", "time_limit_seconds",
    "deep_supervision", "tta", "optimizer", "augment", "foreground_oversample", "train_peak_memory_bytes",
    "stage2_guidance", "dice_cases", *PROCESS_COLUMNS, "dataset_fingerprint", "val_dice", "init_from",
)  # fmt: skip
REQUIRED_COLUMNS = tuple(c for c in RESULT_COLUMNS if c not in OPTIONAL_COLUMNS)
SOURCES = ("run", "benchmark", "peer")
#: Columns that :func:`read_results` parses as numbers; an empty cell becomes NaN (``<NA>`` for integers).
NUMERIC_COLUMNS = (
    "class_index", "dice", "peak_memory_bytes", "inference_seconds_per_case", "train_steps", "train_seconds",
    "seed", "n_test_cases", "planned_bytes", "budget_seconds", "time_limit_seconds", "train_peak_memory_bytes",
    "dice_cases", *PROCESS_COLUMNS, "val_dice",
)  # fmt: skip
INTEGER_COLUMNS = ("class_index", "train_steps", "seed", "n_test_cases", "dice_cases")
#: The range of each numeric column (low, high; ``None``: open); every number must also be finite.
RANGES = {"dice": (0.0, 1.0), "val_dice": (0.0, 1.0), "class_index": (-1, None),
          **{c: (0, None) for c in NUMERIC_COLUMNS if c not in ("dice", "val_dice", "class_index")}}  # fmt: skip
_FIX = "move it away or name another results CSV: run --results NEW.csv, compare NEW.csv"


def utc_timestamp() -> str:
    """Return the current UTC time as ISO 8601 to the microsecond, e.g. ``2024-05-01T12:30:00.123456Z``."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def new_run_id(variant: str) -> str:
    """Return a unique, filesystem-safe run id such as ``20240501T123000Z-patch-3f9a1c``.

    Args:
        variant: the variant name; characters other than letters, digits, ``.``, ``_`` and ``-`` become ``_``.
    """
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", variant) or "run"
    return f"{stamp}-{safe}-{secrets.token_hex(3)}"


def append_rows(path: Path, rows: Sequence[Mapping]) -> Path:
    """Append ``rows`` to the results CSV at ``path``, atomically; earlier rows are kept exactly.

    The new file is written next to the old one (temporary file, fsync, ``os.replace``), so a crash leaves either
    the old or the new file, never a half-written one. Concurrent appends from several processes are serialised
    with a lock on the folder where the platform supports it.

    Args:
        path: the results CSV; created (with its parent folder) when missing.
        rows: one mapping per (run, class) with every column of :data:`REQUIRED_COLUMNS`; the columns of
            :data:`OPTIONAL_COLUMNS` default to empty. ``None`` and NaN are written as empty cells.

    Returns:
        ``path``.

    Raises:
        MedsegError: a row has missing or unknown columns or an unknown ``source``; or ``path`` exists but is not
            a results CSV of this schema (it is then left untouched).

    Example:
        >>> run = dict(run_id=new_run_id("patch"), timestamp=utc_timestamp(), variant="patch", source="run")
        >>> rows = [dict(run, class_index=1, class_name="anterior", dice=0.81, ...)]  # doctest: +SKIP
        >>> append_rows(Path("medseg-work/results.csv"), rows)  # doctest: +SKIP
    """
    path = Path(path)
    records = [_validated_row(row, number) for number, row in enumerate(rows, start=1)]
    if path.is_dir():
        raise MedsegError(f"results file {path} is a folder, not a CSV file; pass --results NEW.csv")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _folder_lock(path.parent):
        old_text = _read_text(path) if path.exists() else ""
        header = _existing_header(path, old_text) if old_text.strip() else list(RESULT_COLUMNS)
        write_text_atomic(path, _new_text(old_text, header, records))
    return path


def read_results(path: Path) -> "pandas.DataFrame":
    """Read a results CSV into a DataFrame with the columns of :data:`RESULT_COLUMNS` (plus any extra ones).

    Text columns keep empty cells as ``""``; :data:`NUMERIC_COLUMNS` are floats with NaN for empty cells, except
    :data:`INTEGER_COLUMNS`, which are nullable integers (``Int64``).

    Args:
        path: the results CSV written by :func:`append_rows`.

    Raises:
        MedsegError: the file is missing, empty, not a results CSV, or a numeric cell or ``source`` is invalid.

    Example:
        >>> df = read_results(Path("medseg-work/results.csv"))  # doctest: +SKIP
        >>> df.query("dataset == 'Task04_Hippocampus' and source == 'run'")  # doctest: +SKIP
    """
    import pandas as pd

    path = Path(path)
    if path.is_dir():
        raise MedsegError(f"results file {path} is a folder, not a CSV file; give the CSV file in it or another path")
    if not path.is_file():
        hint = "run `medseg-mem run` first or pass an existing results CSV"
        raise MedsegError(f"results file {path} does not exist; {hint}")
    text = _read_text(path)
    if not text.strip():
        raise MedsegError(f"results file {path} is empty (no header, no rows): no run has written to it; "
                          f"record runs with `medseg-mem run --results {path}` or give another results CSV")
    header = _existing_header(path, text)
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_values=[])
    except (ValueError, pd.errors.ParserError) as error:
        raise MedsegError(f"{path} is not a results CSV (cannot parse it: {error}); {_FIX}") from error
    for column in RESULT_COLUMNS:
        if column not in header:
            frame[column] = ""
    for column in NUMERIC_COLUMNS:
        frame[column] = _numeric_column(path, frame[column], column)
    _check_sources(path, frame["source"])
    return frame


def final_rows(results: "pandas.DataFrame") -> "pandas.DataFrame":
    """The rows of final models: ``results`` without snapshot rows (those with a ``budget_seconds``)."""
    if "budget_seconds" not in results:
        return results
    return results[results["budget_seconds"].isna()]


def _validated_row(row: Mapping, number: int) -> dict:
    """Return ``row`` as a dict of CSV cell strings; raise naming the missing or unknown columns."""
    missing = [c for c in REQUIRED_COLUMNS if c not in row]
    unknown = [str(c) for c in row if c not in RESULT_COLUMNS]
    if missing or unknown:
        parts = ([f"missing column(s) {', '.join(missing)}"] if missing else []) + (
            [f"unknown column(s) {', '.join(unknown)}"] if unknown else []
        )
        raise MedsegError(f"results row {number}: {'; '.join(parts)}; valid columns: {', '.join(RESULT_COLUMNS)}")
    if row["source"] not in SOURCES:
        raise MedsegError(f"results row {number}: source must be one of {', '.join(SOURCES)}; got {row['source']!r}")
    return {column: _cell(row.get(column)) for column in RESULT_COLUMNS}


def _cell(value: object) -> str:
    """Format one value as a CSV cell: empty for None/NaN, shortest round-trip text for floats."""
    if value is None or isinstance(value, bool):
        return "" if value is None else str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return "" if math.isnan(float(value)) else repr(float(value))
    return str(value)


def _read_text(path: Path) -> str:
    """Return the text of ``path`` (UTF-8, a leading BOM tolerated) or raise naming the file."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise MedsegError(f"{path} is not a results CSV (not UTF-8 text: {error.reason}); {_FIX}") from error
    except OSError as error:
        raise MedsegError(f"cannot read results file {path}: {error.strerror}") from error


def _existing_header(path: Path, text: str) -> List[str]:
    """Return the header of an existing results CSV after checking it has the schema's columns and even rows."""
    try:
        lines = list(csv.reader(io.StringIO(text)))
    except csv.Error as error:
        raise MedsegError(f"{path} is not a results CSV (cannot parse it: {error}); {_FIX}") from error
    header = lines[0] if lines else []
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise MedsegError(f"{path} is not a results CSV (missing column(s) {', '.join(missing)}); {_FIX}")
    for line_number, line in enumerate(lines[1:], start=2):
        if line and len(line) != len(header):
            raise MedsegError(
                f"{path} is not a results CSV (record {line_number} has {len(line)} fields, "
                f"the header has {len(header)}); {_FIX}"
            )
    return header


def _new_text(old_text: str, header: List[str], records: List[dict]) -> str:
    """Return the file's new text: the old text unchanged (plus a final newline if it lacked one), then the rows."""
    if not old_text.strip():
        return _csv_text(list(RESULT_COLUMNS), records, with_header=True)
    missing_optional = [c for c in OPTIONAL_COLUMNS if c not in header]
    if missing_optional:  # an older file without the optional columns: rewrite it with them added
        return _with_columns(old_text, header + missing_optional, records)
    if not old_text.endswith("\n"):
        old_text += "\n"
    return old_text + _csv_text(header, records, with_header=False)


def _csv_text(header: List[str], records: List[dict], with_header: bool) -> str:
    """Return ``records`` as CSV text in the column order of ``header`` (absent columns empty)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n", restval="")
    if with_header:
        writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()


def _with_columns(old_text: str, header: List[str], records: List[dict]) -> str:
    """Return the whole file rewritten with ``header``: old values kept, new columns empty, new rows appended."""
    old_rows = list(csv.DictReader(io.StringIO(old_text)))
    return _csv_text(header, old_rows + records, with_header=True)


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder`` (POSIX) so concurrent appends do not drop each other's rows."""
    try:
        import fcntl

        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):  # no flock here (Windows): appends are atomic but not serialised
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _numeric_column(path: Path, column: "pandas.Series", name: str) -> "pandas.Series":
    """Parse a text column as floats (empty → NaN); raise naming the file, column, row and value on bad text."""
    import pandas as pd

    text = column.astype(str).str.strip()
    numbers_ = pd.to_numeric(text.where(text != "", None), errors="coerce")
    bad = numbers_.isna() & (text != "") & (text.str.lower() != "nan")
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise MedsegError(
            f"{path}: column {name} must hold numbers or be empty; line {row + 2} has {text.iloc[row]!r}"
        )
    numbers_ = numbers_.astype(float)
    _check_range(path, numbers_, text, name)
    if name not in INTEGER_COLUMNS:
        return numbers_
    fractional = numbers_.notna() & (numbers_ != numbers_.round())
    if fractional.any():
        row = int(fractional.to_numpy().nonzero()[0][0])
        raise MedsegError(f"{path}: column {name} must hold whole numbers; line {row + 2} has {text.iloc[row]!r}")
    return numbers_.astype("Int64")


def _check_range(path: Path, values: "pandas.Series", text: "pandas.Series", name: str) -> None:
    """Raise naming the file, line, column and value when a number is infinite or outside :data:`RANGES`."""
    import numpy as np

    low, high = RANGES.get(name, (None, None))
    array = values.to_numpy()
    given = ~np.isnan(array)
    bad = given & (~np.isfinite(array) | (array < (-np.inf if low is None else low))
                   | (array > (np.inf if high is None else high)))  # fmt: skip
    if bad.any():
        row = int(bad.nonzero()[0][0])
        rule = f"in [{low:g}, {high:g}]" if high is not None else f"finite and >= {low:g}"
        raise MedsegError(f"{path}: line {row + 2}, column {name}: {text.iloc[row]!r} is out of range (must be {rule}"
                          f"); fix or remove that row, or {_FIX}")  # fmt: skip


def _check_sources(path: Path, sources: "pandas.Series") -> None:
    """Raise naming the file and value when a ``source`` cell is not one of :data:`SOURCES`."""
    bad = sorted(set(sources) - set(SOURCES))
    if bad:
        raise MedsegError(f"{path}: column source must be one of {', '.join(SOURCES)}; got {', '.join(map(repr, bad))}")
