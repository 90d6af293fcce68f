"""Comparison tables from results rows: one table per (dataset, device, memory method), one row per variant.

Memory and time measured on different devices or with different memory methods are not comparable, so they never
share a table; a note says when a dataset has results in several such groups. Each variant shows its latest run
(by timestamp); the ``n_runs`` column and a note say when there were several. Snapshot rows (Dice at a
training-time mark, ``budget_seconds`` set) are left out: the tables show final models, the time plot
(:mod:`medseg_mem.report.time_plot`) the snapshots. Peer runs (``source == "peer"``: another tool on the same
split and budget, e.g. ``nnunet-3d_fullres``) share the run tables, one row per peer variant after medseg-mem's
own, with a note naming them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, List, Tuple

import pandas as pd

from medseg_mem.core.names import VARIANT_NAMES
from medseg_mem.report.results import PROCESS_COLUMNS, final_rows

GROUP_KEYS = ("dataset", "device", "memory_method")
#: Sources shown in the run tables: medseg-mem's runs and the peers' (Dice, memory, time).
RUN_SOURCES = ("run", "peer")
#: Run-level columns copied from a run's first row into its summary.
RUN_COLUMNS = (
    "run_id", "timestamp", "dataset", "variant", "source", "device", "memory_method", "peak_memory_bytes",
    "inference_seconds_per_case", "train_steps", "n_test_cases", "channels", "loss", "slab_size", "downsample",
    "planned_bytes", "planner_error", "inferer", "train_peak_memory_bytes", *PROCESS_COLUMNS,
)  # fmt: skip
#: What makes two benchmark runs the same configuration (only the latest of each is shown).
BENCHMARK_KEYS = ("variant", "channels", "slab_size", "downsample", "inferer")
DICE_PREFIX = "dice_"


@dataclass
class Group:
    """One comparison table.

    Args:
        dataset, device, memory_method: what every row of ``table`` shares.
        source: ``"run"`` (Dice, memory, time; medseg-mem's runs and peers') or ``"benchmark"`` (memory and time
            only).
        table: raw numbers, one row per variant (benchmark: per configuration); Dice as fractions, memory in bytes.
        classes: the class names, in class-index order, of the ``dice_<class>`` columns.
        notes: sentences to print under the table.
    """

    dataset: str
    device: str
    memory_method: str
    source: str
    table: pd.DataFrame
    classes: Tuple[str, ...] = ()
    notes: List[str] = field(default_factory=list)


def variant_order(names: Iterable[str]) -> List[str]:
    """Return ``names`` with the known variants first (``full``, ``patch``, ``cascade``), then the others sorted."""
    names = set(names)
    return [v for v in VARIANT_NAMES if v in names] + sorted(names - set(VARIANT_NAMES))


def build_groups(results: pd.DataFrame) -> List[Group]:
    """Split ``results`` (as from :func:`medseg_mem.report.results.read_results`) into comparison tables.

    Args:
        results: tidy results rows, possibly filtered (e.g. to one dataset); snapshot rows are left out.

    Returns:
        run groups first, then benchmark groups, each sorted by dataset, device and memory method.
    """
    results = final_rows(results)
    groups: List[Group] = []
    for source, build in (("run", run_table), ("benchmark", benchmark_table)):
        rows = results[results["source"].isin(RUN_SOURCES if source == "run" else (source,))]
        for key, part in sorted(rows.groupby(list(GROUP_KEYS), sort=False), key=lambda item: item[0]):
            table, classes, notes = build(part)
            groups.append(Group(*key, source=source, table=table, classes=classes, notes=notes))
    _note_mixed_groups(groups)
    return groups


def run_summaries(rows: pd.DataFrame) -> Tuple[pd.DataFrame, Tuple[str, ...]]:
    """Return one row per run (run-level columns, ``dice_<class>``, ``mean_dice``) ordered oldest first.

    ``mean_dice`` is the mean over the run's foreground classes (``class_index > 0``) with a Dice value.
    """
    rows = rows.assign(_order=range(len(rows)))
    classes = tuple(rows.sort_values(["class_index", "class_name"], kind="stable")["class_name"].drop_duplicates())
    classes = tuple(name for name in classes if name != "")
    first = rows.groupby("run_id", sort=False).first()
    summary = first[[c for c in RUN_COLUMNS if c != "run_id"] + ["_order"]].reset_index()
    dice = rows.pivot_table(index="run_id", columns="class_name", values="dice", aggfunc="last", sort=False)
    for name in classes:
        summary[DICE_PREFIX + name] = summary["run_id"].map(dice[name]) if name in dice else float("nan")
    foreground = rows[rows["class_index"].gt(0).fillna(False).astype(bool)]
    summary["mean_dice"] = summary["run_id"].map(foreground.groupby("run_id")["dice"].mean())
    return _oldest_first(summary), classes


def run_table(rows: pd.DataFrame) -> Tuple[pd.DataFrame, Tuple[str, ...], List[str]]:
    """Return the table of one run group: the latest run of each variant (medseg-mem's first, then the peers'),
    with ``n_runs``; classes; notes."""
    summary, classes = run_summaries(rows)
    table, notes = _latest(summary, ["variant"])
    table = table.sort_values("source", key=lambda s: s.eq("peer"), kind="stable").reset_index(drop=True)
    peers = table.loc[table["source"] == "peer", "variant"].tolist()
    if peers:
        notes.append(f"peer runs (another tool on the same split and training budget, benchmarks/peer_*.py): "
                     f"{', '.join(peers)}.")
    for column, label in (("train_steps", "train steps"), ("n_test_cases", "test cases")):
        if table[column].nunique(dropna=False) > 1:
            values = ", ".join(f"{v}: {_plain(n)}" for v, n in zip(table["variant"], table[column]))
            notes.append(f"{label} differ between the variants shown ({values}).")
    columns = ["variant", "source", *(DICE_PREFIX + c for c in classes), "mean_dice", "peak_memory_bytes",
               "inference_seconds_per_case", "device", "memory_method", "train_steps", "n_runs", "run_id",
               "timestamp", "n_test_cases", "channels", "slab_size", "downsample", "train_peak_memory_bytes",
               *PROCESS_COLUMNS]  # fmt: skip
    return table[columns], classes, notes


def benchmark_table(rows: pd.DataFrame) -> Tuple[pd.DataFrame, Tuple[str, ...], List[str]]:
    """Return the table of one benchmark group: the latest row of each configuration, with ``n_runs``; notes.

    Each benchmark row is one measurement (several may share a run id, e.g. one per slab size).
    """
    summary = _oldest_first(rows[list(RUN_COLUMNS)].assign(_order=range(len(rows))))
    table, notes = _latest(summary, list(BENCHMARK_KEYS))
    columns = ["variant", "slab_size", "downsample", "channels", "peak_memory_bytes", "planned_bytes",
               "planner_error", "inference_seconds_per_case", "inferer", "device", "memory_method", "n_runs",
               "run_id", "timestamp"]  # fmt: skip
    return table[columns], (), notes


def _oldest_first(summary: pd.DataFrame) -> pd.DataFrame:
    """Sort runs by timestamp, ties (and unparseable timestamps) by their order in the file."""
    when = pd.to_datetime(summary["timestamp"], utc=True, errors="coerce", format="ISO8601")
    summary = summary.assign(_when=when).sort_values(["_when", "_order"], kind="stable", na_position="first")
    return summary.drop(columns=["_when", "_order"]).reset_index(drop=True)


def _latest(summary: pd.DataFrame, keys: List[str]) -> Tuple[pd.DataFrame, List[str]]:
    """Keep the latest run per ``keys`` (``summary`` is oldest first), add ``n_runs``, order by variant."""
    counts = summary.groupby(keys, sort=False, dropna=False).size().rename("n_runs").reset_index()
    table = summary.drop_duplicates(keys, keep="last").merge(counts, on=keys, how="left")
    rank = {name: i for i, name in enumerate(variant_order(table["variant"]))}
    table = table.assign(_rank=table["variant"].map(rank))
    table = table.sort_values(["_rank", *keys[1:]], kind="stable", key=_sort_key)
    table = table.drop(columns="_rank").reset_index(drop=True)
    notes = [
        f"{row.variant}{_config(row, keys)}: {row.n_runs} runs; the latest ({row.run_id}, {row.timestamp}) is shown."
        for row in table.itertuples()
        if row.n_runs > 1
    ]
    return table, notes


def _sort_key(column: pd.Series) -> pd.Series:
    """Sort a column numerically when it holds numbers (slab sizes 8 < 16; empty cells last), else as text."""
    numeric = pd.to_numeric(column, errors="coerce")
    return numeric if numeric.notna().any() else column.astype(str)


def _config(row, keys: List[str]) -> str:
    """Describe a benchmark configuration beyond its variant, e.g. `` (slab_size=16)``."""
    parts = [f"{key}={getattr(row, key)}" for key in keys[1:] if str(getattr(row, key)) != ""]
    return f" ({', '.join(parts)})" if parts else ""


def _note_mixed_groups(groups: List[Group]) -> None:
    """Add a warning to every group of a dataset whose results span several devices or memory methods."""
    for source in ("run", "benchmark"):
        by_dataset: dict = {}
        for group in groups:
            if group.source == source:
                by_dataset.setdefault(group.dataset, []).append(group)
        for dataset, members in by_dataset.items():
            if len(members) > 1:
                where = "; ".join(f"{g.device}: {g.memory_method or 'unknown method'}" for g in members)
                for group in members:
                    group.notes.append(
                        f"WARNING: {dataset} has {source} results on {len(members)} device / memory-method "
                        f"combinations ({where}); memory and time are comparable only within one table."
                    )


def _plain(value: object) -> str:
    """Format a count for a note: ``200`` rather than ``200.0``; ``?`` when missing."""
    if isinstance(value, float):
        return "?" if value != value else f"{value:g}"
    return str(value)
