"""Text rendering of the comparison tables: human units, padded Markdown tables, one section per group.

The Markdown is padded so the same text reads well in a terminal (``medseg-mem compare`` and the end of
``medseg-mem run``) and renders as tables in ``comparison.md``. Dice is shown in percent, as in the thesis tables.
"""

from __future__ import annotations

import math
from typing import Sequence

import pandas as pd

from medseg_mem.core.errors import MedsegError
from medseg_mem.core.units import dice_percent, format_bytes
from medseg_mem.data.fingerprint import dataset_label
from medseg_mem.report.tables import DICE_PREFIX, GROUP_KEYS, Group, build_groups

MISSING = "—"
#: Optional benchmark columns, left out of the text table when no row has a value.
_OPTIONAL = ("slab_size", "downsample", "channels", "planned_bytes", "planner_error", "inferer")


def format_table(results: pd.DataFrame) -> str:
    """Return the comparison tables of ``results`` as padded Markdown, one section per dataset/device group.

    Args:
        results: rows as returned by :func:`medseg_mem.report.results.read_results`, possibly filtered.

    Raises:
        MedsegError: ``results`` lacks a column the tables need.

    Example:
        >>> from medseg_mem.report.results import read_results
        >>> df = read_results(Path("medseg-work/results.csv"))  # doctest: +SKIP
        >>> print(format_table(df.query("dataset == 'Task04_Hippocampus'")))  # doctest: +SKIP
    """
    needed = (*GROUP_KEYS, "source", "run_id", "timestamp", "variant", "class_name", "class_index", "dice")
    missing = [c for c in needed if c not in results.columns]
    if missing:
        raise MedsegError(f"format_table: the results table lacks column(s) {', '.join(missing)}")
    if results.empty:
        return "No results to compare."
    return "\n\n".join(render_group(group) for group in build_groups(results))


def render_group(group: Group) -> str:
    """Return one group as a heading, a Markdown table and its notes."""
    if group.source == "run":
        headers, rows, numeric = _run_cells(group)
    else:
        headers, rows, numeric = _benchmark_cells(group)
    parts = [group_heading(group), markdown_table(headers, rows, numeric)]
    parts += [f"> {note}" for note in group.notes]
    return "\n\n".join(parts)


#: What each measuring method reads, in words (the method string itself stays in the results CSV).
METHOD_WORDS = (("cuda.max_memory_reserved", "GPU memory reserved by PyTorch's allocator"),
                ("cuda.max_memory_allocated", "GPU memory held by tensors"),
                ("proc.", "peak resident memory of the process"), ("resource.", "peak resident memory of the process"))


def method_words(method: object) -> str:
    """``proc.clear_refs+VmHWM+glibc-mmap-1MiB`` -> ``peak resident memory of the process``; an unknown method as
    written.

    Example:
        >>> method_words("cuda.max_memory_reserved")
        "GPU memory reserved by PyTorch's allocator"
    """
    text = str(method or "").strip()
    return next((words for prefix, words in METHOD_WORDS if text.startswith(prefix)), text or "unknown method")


def group_heading(group: Group) -> str:
    """Return e.g. ``## Task04_Hippocampus [3f9a1c0b7d2e] — cpu, peak resident memory of the process``
    (benchmarks say so, without a fingerprint)."""
    where = f"{group.device or 'unknown device'}, {method_words(group.memory_method)}"
    kind = "" if group.source == "run" else " — benchmark (memory and time only)"
    if group.source != "run":
        return f"## {group.dataset or 'unknown dataset'}{kind} — {where}"
    return f"## {dataset_label(group.dataset or 'unnamed', group.fingerprint)}{kind} — {where}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool]) -> str:
    """Return a Markdown table with padded cells; ``numeric`` columns are right-aligned."""
    widths = [max(3, len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        padded = [c.rjust(w) if n else c.ljust(w) for c, w, n in zip(cells, widths, numeric)]
        return "| " + " | ".join(padded) + " |"

    rule = "| " + " | ".join("-" * (w - 1) + ":" if n else "-" * w for w, n in zip(widths, numeric)) + " |"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def format_size(value: object) -> str:
    """Return a byte count as every command prints it (:func:`~medseg_mem.core.units.format_bytes`, e.g.
    ``1.23 GiB``); ``—`` if missing."""
    return MISSING if _missing(value) else format_bytes(value)


def format_number(value: object) -> str:
    """Return a number with about three significant digits (``0.0123``, ``4.49``, ``21.5``, ``325``)."""
    if _missing(value):
        return MISSING
    number = float(value)
    if abs(number) < 1:
        return f"{number:.3g}"
    return f"{number:.0f}" if abs(number) >= 100 else f"{number:.1f}" if abs(number) >= 10 else f"{number:.2f}"


def format_dice(value: object) -> str:
    """Return a Dice fraction as a percentage with two decimals (``0.8013`` → ``80.13``)."""
    return MISSING if _missing(value) else dice_percent(value)


def format_count(value: object) -> str:
    """Return a whole number without a decimal point; ``—`` if missing."""
    return MISSING if _missing(value) else f"{float(value):.0f}"


def format_text(value: object) -> str:
    """Return a text cell as written, a long decimal shortened to three significant digits; ``—`` if empty."""
    if _missing(value):
        return MISSING
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return text if number.is_integer() or len(text) <= 6 else format_number(number)


#: The run table's memory columns: the whole process at the inference's and the training's peak, each beside its
#: plan, then what the inference added to the process (the figure older rows have alone).
MEMORY_CELLS = (("process_peak_bytes", "inference peak"), ("planned_process_bytes", "planned"),
                ("train_process_peak_bytes", "training peak"), ("train_planned_process_bytes", "planned"),
                ("peak_memory_bytes", "inference added"))  # fmt: skip


def _run_cells(group: Group):
    """Headers, rows and numeric flags of a run table."""
    headers = ["variant", *(f"Dice % {c}" for c in group.classes), "mean Dice % (fg)",
               *(label for _, label in MEMORY_CELLS), "time / case (s)", "device", "train steps", "n runs"]  # fmt: skip
    rows = [
        [row["variant"], *(format_dice(row[DICE_PREFIX + c]) for c in group.classes), format_dice(row["mean_dice"]),
         *(format_size(row.get(column)) for column, _ in MEMORY_CELLS),
         format_number(row["inference_seconds_per_case"]), format_text(row["device"]),
         format_count(row["train_steps"]), format_count(row["n_runs"])]  # fmt: skip
        for _, row in group.table.iterrows()
    ]
    numeric = [False, *(True for _ in group.classes), True, *(True for _ in MEMORY_CELLS), True, False, True, True]
    return headers, rows, numeric


def _benchmark_cells(group: Group):
    """Headers, rows and numeric flags of a benchmark table; optional columns without values are left out."""
    table = group.table
    shown = [c for c in _OPTIONAL if not table[c].map(_missing).all()]
    spec = [("variant", "variant", format_text, False),
            ("slab_size", "slab size", format_text, True), ("downsample", "downsample", format_text, True),
            ("channels", "channels", format_text, False), ("peak_memory_bytes", "peak memory", format_size, True),
            ("planned_bytes", "planned", format_size, True), ("planner_error", "planner error", format_text, True),
            ("inference_seconds_per_case", "time / case (s)", format_number, True),
            ("inferer", "inferer", format_text, False), ("n_runs", "n runs", format_count, True)]  # fmt: skip
    spec = [s for s in spec if s[0] not in _OPTIONAL or s[0] in shown]
    headers = [s[1] for s in spec]
    rows = [[fmt(row[column]) for column, _, fmt, _ in spec] for _, row in table.iterrows()]
    return headers, rows, [s[3] for s in spec]


def _missing(value: object) -> bool:
    """True for None, NaN and empty or blank text."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, str):
        return value.strip() == ""
    return bool(pd.isna(value)) if not isinstance(value, (list, tuple)) else False
