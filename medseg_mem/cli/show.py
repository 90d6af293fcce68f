"""``medseg-mem show``: draw a trained run's test cases (or the named ones) with prediction and ground truth
outlined (:func:`medseg_mem.overlay.show.show_run`)."""

from __future__ import annotations

from pathlib import Path

import click

from medseg_mem.cli.common import library_errors
from medseg_mem.core.locations import HOME_TEXT, default_runs
from medseg_mem.core.names import DEVICE_NAMES


@click.command()
@click.argument("run")
@click.argument("cases", nargs=-1, metavar="[CASE]...")
@click.option("--runs", "runs_dir", type=click.Path(path_type=Path, file_okay=False), default=default_runs,
              show_default=f"{HOME_TEXT}/runs", help="Where a RUN given as a run id is looked for.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Folder for the PNGs [<run folder>/show].")
@click.option("--overwrite", is_flag=True, help="Replace PNGs that exist in --out (those in <run folder>/show "
                                                "are always replaced).")
@click.option("--device", type=click.Choice(DEVICE_NAMES), default="auto", show_default=True,
              help="auto (cuda if available), cpu or cuda.")
@library_errors
def show(run, cases, runs_dir, out_dir, overwrite, device) -> None:
    """Draw a run's test cases (or CASE...) over their images, prediction and ground truth outlined.

    RUN is a run folder (medseg-work/runs/<run id>) or a run id in --runs. Each case of the run's prepared
    dataset is segmented by the whole variant with the run's best checkpoints and drawn as <case>.png: the
    image's three planes through the foreground, the prediction outlined in red (just outside each predicted
    class), the ground truth in green (on each class's boundary), predicted classes lightly filled in the
    legend's colours, and the case's Dice per class in the title.

    \b
    Examples:
      medseg-mem show 20261123T094821Z-full-6cc477              # the test cases -> <run folder>/show/
      medseg-mem show medseg-work/runs/<run id> rods_005 --out figures/
    """
    from medseg_mem.overlay.show import find_run, show_run

    click.echo(show_run(find_run(run, runs_dir), cases, out_dir, device, overwrite).line())
