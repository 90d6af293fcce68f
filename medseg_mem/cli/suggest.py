"""``medseg-mem suggest``: rank unlabelled scans by a trained run's uncertainty; call
:func:`medseg_mem.predict.suggest.rank_scans`."""

from __future__ import annotations

from pathlib import Path

import click

from medseg_mem.cli.common import library_errors, parse_budget
from medseg_mem.core.names import DEVICE_NAMES

#: As :data:`medseg_mem.predict.uncertainty.SCORE_NAMES` (kept here so ``--help`` needs no torch).
SCORES = ("entropy", "mirror", "stages")


@click.command()
@click.argument("scans", nargs=-1, type=click.Path(path_type=Path), metavar="SCAN...")
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path),
              help="A trained run: its folder (medseg-work/runs/<run id>) or any .pt in it.")
@click.option("--count", required=True, type=int, help="How many scans to suggest for annotation (>= 1); each gets "
              "a predicted label map to correct.")
@click.option("--score", type=click.Choice(SCORES), default="entropy", show_default=True,
              help="entropy: mean voxel entropy inside the predicted foreground; mirror: disagreement between "
                   "test-time mirrors (4 passes); stages: disagreement between a cascade's two stages.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), default=Path("suggested"),
              show_default=True, help="Folder for ranking.csv (every scan, most uncertain first) and the label maps "
                                      "of the --count first (<name>_seg.nii.gz).")
@click.option("--overwrite", is_flag=True, help="Replace a ranking.csv and label maps that exist already.")
@click.option("--device", type=click.Choice(DEVICE_NAMES), default="auto", show_default=True,
              help="auto (cuda if available), cpu or cuda.")
@click.option("--budget", "budget_bytes", callback=parse_budget,
              help="Memory the scoring must fit, e.g. 8GB [free memory less 10 %].")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@library_errors
def suggest(scans, checkpoint, count, score, out_dir, overwrite, device, budget_bytes, quiet) -> None:
    """Rank unlabelled scans (NIfTI files or folders) by how unsure a trained run is of them, so the most useful
    ones are annotated next; write OUT/ranking.csv and the --count first scans' label maps as starting points.

    \b
    Example:
      medseg-mem suggest --checkpoint medseg-work/runs/<run id> unlabelled/ --count 5 --out next/
    """
    if not scans:
        raise click.UsageError("SCAN...: give the unlabelled scans to rank (NIfTI files or folders of them)")
    if count < 1:
        raise click.BadParameter(f"must be at least 1 (how many scans to suggest); got {count}",
                                 param_hint="--count")
    from medseg_mem.predict.suggest import rank_scans

    ranked = rank_scans(checkpoint, scans, count, score, out_dir, device, overwrite, progress=not quiet,
                        warn=lambda line: click.echo(line, err=True), budget_bytes=budget_bytes)  # fmt: skip
    chosen = ", ".join(f"{r.case} ({r.score:.3f})" for r in ranked[:count])
    click.echo(f"ranked {len(ranked)} scan(s) by {score}; annotate next: {chosen}; ranking and label maps in "
               f"{out_dir}")
