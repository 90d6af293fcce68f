"""``medseg-mem compare``: the thesis-style comparison tables and plot from the results CSV.

Only click and light modules are imported here; pandas and matplotlib are imported inside the command body.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from medseg_mem.cli.common import library_errors
from medseg_mem.core.names import DEFAULT_RESULTS


@click.command("compare")
@click.argument("results_csv", required=False, default=str(DEFAULT_RESULTS), type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder for comparison.md, comparison.csv, comparison.png (and comparison-time.png) [default: next to "
    "RESULTS_CSV].",
)
@library_errors
def compare(results_csv: Path, out_dir: Optional[Path]) -> None:
    """Compare the variants recorded in RESULTS_CSV [default: medseg-work/results.csv].

    Prints one table per dataset, device and memory method (rows: variants; columns: Dice per class, mean
    foreground Dice, peak memory, inference time) and writes them as Markdown, CSV and a Dice-against-memory plot.
    When RESULTS_CSV holds snapshot rows (run --snapshots), also comparison-time.png: mean foreground Dice against
    training minutes, one line per variant; the tables show final models only.
    """
    from medseg_mem.report import compare as write_report

    report = write_report(results_csv, out_dir)
    click.echo(report.text)
    click.echo("")
    for path in (report.markdown_path, report.csv_path, report.png_path, report.time_png_path):
        if path is not None:
            click.echo(f"wrote {path}")
