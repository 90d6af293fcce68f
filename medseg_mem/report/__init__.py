"""The comparison report: thesis-style tables (Markdown and CSV) and a memory/accuracy plot from the results CSV,
plus a Dice-against-training-time plot when the CSV holds snapshot rows.

Example:
    >>> from medseg_mem.report import compare
    >>> report = compare(Path("medseg-work/results.csv"))  # doctest: +SKIP
    >>> print(report.text)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import pandas as pd

from medseg_mem import __version__
from medseg_mem.core.files.atomic import write_text_atomic
from medseg_mem.core.errors import MedsegError
from medseg_mem.core.units import format_bytes
from medseg_mem.report.format import format_table, render_group
from medseg_mem.report.tables import GROUP_KEYS, Group, build_groups
from medseg_mem.report.results import read_results

__all__ = ["CompareReport", "compare", "comparison_frame", "format_bytes", "format_table"]

#: Leading columns of ``comparison.csv``; the ``dice_<class>`` columns and the rest follow.
CSV_LEAD = (*GROUP_KEYS, "source", "variant", "n_runs", "run_id", "timestamp", "mean_dice", "dataset_fingerprint",
            "val_dice")  # fmt: skip


@dataclass(frozen=True)
class CompareReport:
    """What :func:`compare` wrote.

    Args:
        results_csv: the results file read.
        markdown_path, csv_path, png_path: ``comparison.md``, ``comparison.csv``, ``comparison.png``.
        text: the tables as padded Markdown (also the body of ``comparison.md``).
        time_png_path: ``comparison-time.png`` (Dice against training time), or ``None`` when the results hold no
            snapshot rows and it was not drawn.
    """

    results_csv: Path
    markdown_path: Path
    csv_path: Path
    png_path: Path
    text: str
    time_png_path: Optional[Path] = None


def compare(results_csv: Path, out_dir: Optional[Path] = None, choice: str = "best",
            run_ids: Sequence[str] = ()) -> CompareReport:  # fmt: skip
    """Write the comparison tables and plot of a results CSV.

    Args:
        results_csv: a results CSV written by :func:`medseg_mem.report.results.append_rows`.
        out_dir: where ``comparison.md``, ``comparison.csv`` and ``comparison.png`` (and, with snapshot rows,
            ``comparison-time.png``) go; default: next to ``results_csv``. Created when missing.
        choice: per dataset, each variant's ``best`` run by validation Dice, or its ``latest``.
        run_ids: show these runs instead (each variant's named run).

    Raises:
        MedsegError: the results file is missing, malformed or has no rows; ``out_dir`` is not a folder; a file
            cannot be written (each is written atomically: the previous one is kept); a named run is not in it.
    """
    from medseg_mem.report.plot import plot_comparison  # matplotlib only when a plot is drawn
    from medseg_mem.report.time_plot import FILE_NAME, plot_dice_over_time

    results_csv = Path(results_csv)
    results = read_results(results_csv)
    if results.empty:
        raise MedsegError(f"results file {results_csv} has no rows yet; run `medseg-mem run` first")
    out_dir = Path(out_dir) if out_dir is not None else results_csv.parent
    if out_dir.exists() and not out_dir.is_dir():
        raise MedsegError(f"--out {out_dir} is a file; pass a folder for the comparison files")
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = build_groups(results, choice, run_ids)
    text = "\n\n".join(render_group(group) for group in groups)
    paths = [out_dir / name for name in ("comparison.md", "comparison.csv", "comparison.png")]
    title = f"medseg-mem comparison — {results_csv.name}"
    time_path = plot_dice_over_time(results, out_dir / FILE_NAME, title=title)
    markdown = _markdown(results_csv, results, text, time_path, _chosen_text(choice, run_ids))
    write_text_atomic(paths[0], markdown)  # each file whole or not at all
    write_text_atomic(paths[1], comparison_frame(groups).to_csv(index=False))
    plot_comparison(groups, paths[2], title=title)
    return CompareReport(results_csv, *paths, text=text, time_png_path=time_path)


def comparison_frame(groups: List[Group]) -> pd.DataFrame:
    """Return every group's table stacked into one machine-readable frame (Dice as fractions, memory in bytes)."""
    frames = [_with_source(group.table, group.source).assign(dataset=group.dataset,
                                                             dataset_fingerprint=group.fingerprint)
              for group in groups]  # fmt: skip
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(CSV_LEAD))
    for column in CSV_LEAD:
        if column not in frame:
            frame[column] = ""
    dice = [c for c in frame.columns if c.startswith("dice_")]
    rest = [c for c in frame.columns if c not in CSV_LEAD and c not in dice]
    return frame[[*CSV_LEAD, *dice, *rest]]


def _with_source(table: pd.DataFrame, source: str) -> pd.DataFrame:
    """``table`` with a ``source`` column: each row's own (``run`` or ``peer`` in a run table), else ``source``."""
    return table if "source" in table else table.assign(source=source)


def _chosen_text(choice: str, run_ids: Sequence[str]) -> str:
    """How each table's rows were chosen, for ``comparison.md``."""
    if run_ids:
        return f"each row is a run named with --runs ({', '.join(run_ids)})"
    if choice == "latest":
        return "each row is the latest run of its variant (--latest)"
    return "each row is the best run of its variant by validation Dice (runs without one: the latest)"


def _markdown(results_csv: Path, results: pd.DataFrame, text: str, time_path: Optional[Path] = None,
              chosen: str = "each row is the best run of its variant by validation Dice") -> str:  # fmt: skip
    """Return the body of ``comparison.md``: a title, where the numbers come from, the tables, the plots."""
    time_plot = f"\n![mean Dice against training time]({time_path.name})\n" if time_path is not None else ""
    runs = results["run_id"].nunique()
    return (
        "# medseg-mem comparison\n\n"
        f"From `{results_csv}` ({len(results)} rows, {runs} runs), medseg-mem {__version__}. "
        "Dice in percent on the test split, over the cases that score each class (— where none does); "
        "*mean Dice % (fg)* averages the scored foreground classes; "
        f"{chosen}. Memory and time are compared only within one table "
        "(same dataset, device and memory method); a dataset is its name and fingerprint.\n\n"
        f"{text}\n\n![mean Dice against peak memory](comparison.png)\n{time_plot}"
    )
