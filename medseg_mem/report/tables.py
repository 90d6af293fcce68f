"""Comparison tables from results rows: one table per (dataset, device, memory method), one row per variant.

Memory and time measured on different devices or with different memory methods are not comparable, so they never
share a table; a note says when a dataset has results in several such groups. A dataset is its name and its
fingerprint (:mod:`medseg_mem.data.fingerprint`): runs on another task, other classes or another split never share
a table; rows written before fingerprints were recorded form their own group ("unknown dataset"). Each variant
shows its best run by validation Dice (``val_dice``; rows without one rank after those with one, the latest
first), or its latest run (``choice="latest"``), or the run the user names (``run_ids``); the ``n_runs`` column and
a note say which was chosen when there were several. Snapshot rows (Dice at a
training-time mark, ``budget_seconds`` set) are left out: the tables show final models, the time plot
(:mod:`medseg_mem.report.time_plot`) the snapshots. Peer runs (``source == "peer"``: another tool on the same
split and budget, e.g. ``nnunet-3d_fullres``) share the run tables, one row per peer variant after medseg-mem's
own, with a note naming them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, List, Sequence, Tuple

import pandas as pd

from medseg_mem.core.errors import MedsegError, look_up_option
from medseg_mem.core.names import VARIANT_NAMES
from medseg_mem.report.results import PROCESS_COLUMNS, final_rows

GROUP_KEYS = ("dataset", "device", "memory_method")
#: What splits results into tables: a dataset (name and fingerprint), a device, a memory method.
SPLIT_KEYS = ("dataset", "dataset_fingerprint", "device", "memory_method")
#: How a variant's run is chosen when it has several: by validation Dice, or the latest.
CHOICES = ("best", "latest")
#: Sources shown in the run tables: medseg-mem's runs and the peers' (Dice, memory, time).
RUN_SOURCES = ("run", "peer")
#: Run-level columns copied from a run's first row into its summary.
RUN_COLUMNS = (
    "run_id", "timestamp", "dataset", "variant", "source", "device", "memory_method", "peak_memory_bytes",
    "inference_seconds_per_case", "train_steps", "n_test_cases", "channels", "loss", "slab_size", "downsample",
    "planned_bytes", "planner_error", "inferer", "train_peak_memory_bytes", *PROCESS_COLUMNS, "val_dice", "init_from",
)  # fmt: skip
FINE_TUNED = " (fine-tuned)"
#: What makes two benchmark runs the same configuration (only the latest of each is shown).
BENCHMARK_KEYS = ("variant", "channels", "slab_size", "downsample", "inferer")
DICE_PREFIX = "dice_"
#: The cascade's stages: its ``train_steps`` is at least their sum.
CASCADE_STAGES = 2


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
        fingerprint: the dataset's fingerprint (empty: rows written before fingerprints were recorded).
    """

    dataset: str
    device: str
    memory_method: str
    source: str
    table: pd.DataFrame
    classes: Tuple[str, ...] = ()
    notes: List[str] = field(default_factory=list)
    fingerprint: str = ""


def variant_order(names: Iterable[str]) -> List[str]:
    """Return ``names`` with the known variants first (``full``, ``patch``, ``cascade``), then the others sorted."""
    names = set(names)
    return [v for v in VARIANT_NAMES if v in names] + sorted(names - set(VARIANT_NAMES))


def build_groups(results: pd.DataFrame, choice: str = "best", run_ids: Sequence[str] = ()) -> List[Group]:
    """Split ``results`` (as from :func:`medseg_mem.report.results.read_results`) into comparison tables.

    Args:
        results: tidy results rows, possibly filtered (e.g. to one dataset); snapshot rows are left out.
        choice: ``"best"`` (each variant's run with the highest validation Dice) or ``"latest"``.
        run_ids: run ids to show instead (each variant's named run; the others are left out).

    Returns:
        run groups first, then benchmark groups, each sorted by dataset, device and memory method.

    Raises:
        MedsegError: an unknown ``choice``, or a run id that is not in ``results``.
    """
    look_up_option(choice, CHOICES, "--latest")
    results = _named_runs(final_rows(results), tuple(run_ids))
    for column, empty in (("dataset_fingerprint", ""), ("val_dice", float("nan"))):
        if column not in results:  # a frame built by hand, or by an older reader
            results = results.assign(**{column: empty})
    groups: List[Group] = []
    for source, build in (("run", run_table), ("benchmark", benchmark_table)):
        rows = results[results["source"].isin(RUN_SOURCES if source == "run" else (source,))]
        for key, part in sorted(rows.groupby(list(SPLIT_KEYS), sort=False), key=lambda item: item[0]):
            table, classes, notes = build(part, "named" if run_ids else choice)
            dataset, digest, device, method = key
            groups.append(Group(dataset, device, method, source=source, table=table, classes=classes, notes=notes,
                                fingerprint=digest))  # fmt: skip
    _note_mixed_groups(groups)
    return groups


def _named_runs(results: pd.DataFrame, run_ids: Tuple[str, ...]) -> pd.DataFrame:
    """``results`` restricted to the rows of ``run_ids`` (all rows when none is named)."""
    if not run_ids:
        return results
    unknown = [run_id for run_id in run_ids if run_id not in set(results["run_id"])]
    if unknown:
        raise MedsegError(f"--runs: no run {', '.join(unknown)} in the results; give run ids from its run_id column")
    return results[results["run_id"].isin(run_ids)]


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


def run_table(rows: pd.DataFrame, choice: str = "best") -> Tuple[pd.DataFrame, Tuple[str, ...], List[str]]:
    """Return the table of one run group: the chosen run of each variant (``choice``: ``best`` by validation Dice,
    ``latest``, or ``named``: the latest of those left), medseg-mem's first, then the peers', with ``n_runs``;
    classes; notes."""
    summary, classes = run_summaries(rows)
    summary, fine_tuned = _mark_fine_tuned(summary)
    table, notes = _chosen(summary, ["variant"], choice)
    if choice == "named":
        notes.append(f"runs named with --runs: {', '.join(f'{v} {r}' for v, r in zip(table.variant, table.run_id))}.")
    if fine_tuned:
        starts = table.loc[table["variant"].str.endswith(FINE_TUNED), ["variant", "init_from"]]
        notes.append("fine-tuned runs (run --init-from) started from a trained run's weights: "
                     + ", ".join(f"{v} from {i}" for v, i in zip(starts["variant"], starts["init_from"])) + ".")
    table = table.sort_values("source", key=lambda s: s.eq("peer"), kind="stable").reset_index(drop=True)
    peers = table.loc[table["source"] == "peer", "variant"].tolist()
    if peers:
        notes.append(f"peer runs (another tool on the same split and training budget, benchmarks/peer_*.py): "
                     f"{', '.join(peers)}.")
    notes += [note for note in (_steps_note(table), _cases_note(table)) if note]
    columns = ["variant", "source", *(DICE_PREFIX + c for c in classes), "mean_dice", "peak_memory_bytes",
               "inference_seconds_per_case", "device", "memory_method", "train_steps", "n_runs", "run_id",
               "timestamp", "n_test_cases", "channels", "slab_size", "downsample", "train_peak_memory_bytes",
               *PROCESS_COLUMNS]  # fmt: skip
    return table[columns], classes, notes


def _mark_fine_tuned(summary: pd.DataFrame) -> Tuple[pd.DataFrame, bool]:
    """Runs fine-tuned from another run (``init_from`` set) become variant ``<name> (fine-tuned)``, so the tables
    keep them apart from runs trained from random weights; also whether there were any."""
    started = summary["init_from"].fillna("").astype(str).str.strip().ne("")
    if not started.any():
        return summary, False
    return summary.assign(variant=summary["variant"].where(~started, summary["variant"] + FINE_TUNED)), True


def _steps_note(table: pd.DataFrame) -> str:
    """Say how the variants' training steps compare. The cascade's figure sums the steps of every model it trains
    (stage 1, stage 2 and, with predicted guidance, the fold models), so ``full: 200, patch: 200, cascade: 400`` is
    the same training per model and is said as such; only steps that still differ per model are a difference."""
    if table["train_steps"].nunique(dropna=False) <= 1:
        return ""
    steps = dict(zip(table["variant"], table["train_steps"]))
    values = ", ".join(f"{v}: {_plain(n)}" for v, n in steps.items())
    if "cascade" not in steps:
        return f"train steps differ between the variants shown ({values})."
    summed = "the cascade's figure is the sum over the models it trains (stage 1, stage 2, any fold models)"
    others = {n for v, n in steps.items() if v != "cascade"}
    each = others.pop() if len(others) == 1 else None
    models = steps["cascade"] / each if each else float("nan")
    if models == models and models.is_integer() and models >= CASCADE_STAGES:
        return f"train steps: {values}; {summed}: {models:.0f} models of {_plain(each)} steps, as the others train."
    return f"train steps differ between the variants shown ({values}); {summed}."


def _cases_note(table: pd.DataFrame) -> str:
    """Say when the variants were scored on different numbers of test cases."""
    if table["n_test_cases"].nunique(dropna=False) <= 1:
        return ""
    values = ", ".join(f"{v}: {_plain(n)}" for v, n in zip(table["variant"], table["n_test_cases"]))
    return f"test cases differ between the variants shown ({values})."


def benchmark_table(rows: pd.DataFrame, choice: str = "latest") -> Tuple[pd.DataFrame, Tuple[str, ...], List[str]]:
    """Return the table of one benchmark group: the latest row of each configuration, with ``n_runs``; notes.

    Each benchmark row is one measurement (several may share a run id, e.g. one per slab size).
    """
    summary = _oldest_first(rows[list(RUN_COLUMNS)].assign(_order=range(len(rows))))
    table, notes = _chosen(summary, list(BENCHMARK_KEYS), "latest")
    columns = ["variant", "slab_size", "downsample", "channels", "peak_memory_bytes", "planned_bytes",
               "planner_error", "inference_seconds_per_case", "inferer", "device", "memory_method", "n_runs",
               "run_id", "timestamp"]  # fmt: skip
    return table[columns], (), notes


def _oldest_first(summary: pd.DataFrame) -> pd.DataFrame:
    """Sort runs by timestamp, ties (and unparseable timestamps) by their order in the file."""
    when = pd.to_datetime(summary["timestamp"], utc=True, errors="coerce", format="ISO8601")
    summary = summary.assign(_when=when).sort_values(["_when", "_order"], kind="stable", na_position="first")
    return summary.drop(columns=["_when", "_order"]).reset_index(drop=True)


def _chosen(summary: pd.DataFrame, keys: List[str], choice: str) -> Tuple[pd.DataFrame, List[str]]:
    """Keep one run per ``keys`` (``summary`` is oldest first): the best by validation Dice or the latest; add
    ``n_runs``, order by variant; a note per key with several runs says which was chosen."""
    counts = summary.groupby(keys, sort=False, dropna=False).size().rename("n_runs").reset_index()
    ranked = summary
    if choice == "best":  # stable: among equal (or missing) validation Dice the latest stays last
        ranked = summary.assign(_val=summary["val_dice"].astype(float).fillna(-1.0)).sort_values("_val", kind="stable")
        ranked = ranked.drop(columns="_val")
    table = ranked.drop_duplicates(keys, keep="last").merge(counts, on=keys, how="left")
    rank = {name: i for i, name in enumerate(variant_order(table["variant"]))}
    table = table.assign(_rank=table["variant"].map(rank))
    table = table.sort_values(["_rank", *keys[1:]], kind="stable", key=_sort_key)
    table = table.drop(columns="_rank").reset_index(drop=True)
    notes = [f"{row.variant}{_config(row, keys)}: {row.n_runs} runs; {_why(row, choice)} is shown."
             for row in table.itertuples() if row.n_runs > 1]  # fmt: skip
    return table, notes


def _why(row, choice: str) -> str:
    """Which run of several is shown and why, e.g. ``the best by validation Dice (<run id>, 97.1 %)``."""
    val = getattr(row, "val_dice", float("nan"))
    if choice == "best" and pd.notna(val):
        return f"the best by validation Dice ({row.run_id}, {100 * float(val):.1f} %)"
    if choice == "best":
        return f"the latest ({row.run_id}, {row.timestamp}; no validation Dice recorded to rank by)"
    if choice == "named":
        return f"the latest named ({row.run_id}, {row.timestamp})"
    return f"the latest ({row.run_id}, {row.timestamp})"


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
                by_dataset.setdefault((group.dataset, group.fingerprint), []).append(group)
        for (dataset, _), members in by_dataset.items():
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
