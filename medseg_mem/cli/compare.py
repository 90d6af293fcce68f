"""``medseg-mem compare``: the thesis-style comparison tables and plot from the results CSV.

Only click and light modules are imported here; pandas and matplotlib are imported inside the command body.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import click

from medseg_mem.cli.common import library_errors
from medseg_mem.core.locations import default_results


def parse_run_ids(ctx, param, value: Optional[str]) -> Tuple[str, ...]:
    """``a,b`` -> ``("a", "b")``; empty names are refused."""
    if value is None:
        return ()
    ids = tuple(part.strip() for part in value.split(","))
    if not all(ids):
        raise click.BadParameter(f"give run ids separated by commas, e.g. ID1,ID2; got {value!r}")
    return ids


@click.command("compare")
@click.argument("results_csv", required=False, default=default_results, type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder for comparison.md, comparison.csv, comparison.png (and comparison-time.png) [default: next to "
    "RESULTS_CSV].",
)
@click.option("--latest", is_flag=True,
              help="Show each variant's latest run instead of its best by validation Dice.")
@click.option("--runs", "run_ids", callback=parse_run_ids, metavar="ID,...",
              help="Show these runs (comma-separated run ids) instead of each variant's best.")
@library_errors
def compare(results_csv: Path, out_dir: Optional[Path], latest: bool, run_ids: Tuple[str, ...]) -> None:
    """Compare the variants recorded in RESULTS_CSV [default: $MEDSEG_MEM_HOME/results.csv, else
    medseg-work/results.csv].

    Prints one table per dataset, device and memory method (rows: variants; columns: Dice per class, mean
    foreground Dice, peak memory, inference time) and writes them as Markdown, CSV and a Dice-against-memory plot.
    A dataset is its name and fingerprint (task, channels, classes, preprocessing, cases and split), so runs on
    different data never share a table; rows written before fingerprints were recorded show as "unknown dataset".
    Each variant shows its best run by validation Dice (--latest: its latest; --runs: the runs named), and a
    note under the table says which run it chose when there were several.
    When RESULTS_CSV holds snapshot rows (run --snapshots), also comparison-time.png: mean foreground Dice against
    training minutes, one line per variant; the tables show final models only.
    """
    from medseg_mem.report import compare as write_report

    if latest and run_ids:
        raise click.UsageError("--latest and --runs both choose the runs shown; give one of them")
    report = write_report(results_csv, out_dir, "latest" if latest else "best", run_ids)
    click.echo(report.text)
    click.echo("")
    for path in (report.markdown_path, report.csv_path, report.png_path, report.time_png_path):
        if path is not None:
            click.echo(f"wrote {path}")
