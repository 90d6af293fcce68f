"""``medseg-mem prepare``: check and preprocess an MSD task or nnU-Net v2 dataset (or the embedded default) into a
prepared folder.

Imports only click and light modules at import time; the library (torch, MONAI, nibabel) loads when the
command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from medseg_mem.cli.common import library_errors
from medseg_mem.core.locations import HOME_TEXT, default_prepared
from medseg_mem.core.names import READER_NAMES, SYNTHETIC_NAMES

MIN_CASES = 3  # so that the 60/20/20 split leaves validation and test non-empty


class SpacingParam(click.ParamType):
    """``median`` or three positive numbers ``X,Y,Z`` in mm."""

    name = "median|X,Y,Z"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, tuple):
            return value
        text = str(value).strip()
        if text.lower() == "median":
            return "median"
        parts = [p.strip() for p in text.split(",")]
        try:
            numbers = tuple(float(p) for p in parts)
        except ValueError:
            numbers = ()
        if len(numbers) != 3 or not all(n > 0 and n != float("inf") for n in numbers):
            self.fail(f"must be 'median' or three positive numbers in mm like 1,1,1.5; got {value!r}", param, ctx)
        return numbers


class ShapeParam(click.ParamType):
    """Three positive integers ``X,Y,Z`` (voxels), e.g. ``240,240,155``."""

    name = "X,Y,Z"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, tuple):
            return value
        parts = [p.strip() for p in str(value).split(",")]
        try:
            sizes = tuple(int(p) for p in parts)
        except ValueError:
            sizes = ()
        if len(sizes) != 3 or min(sizes) < 1:
            self.fail(f"must be three positive whole numbers of voxels like 240,240,155; got {value!r}", param, ctx)
        return sizes


@click.command("prepare")
@click.argument("task_dir", required=False, type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=default_prepared,
    show_default=f"{HOME_TEXT}/prepared",
    help="Folder the prepared dataset appears in (atomically).",
)
@click.option(
    "--reader",
    type=click.Choice(READER_NAMES),
    default="nibabel",
    show_default=True,
    help="MONAI image reader.",
)
@click.option(
    "--spacing",
    type=SpacingParam(),
    default=None,
    metavar="median|X,Y,Z",
    help="Resample to 'median' (the dataset's median spacing, as nnU-Net) or X,Y,Z mm. Default: keep the native grid.",
)
@click.option("--crop-foreground", is_flag=True, help="Crop each case to the bounding box of its nonzero voxels.")
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seed of the 60/20/20 split (and of a generated task).",
)
@click.option(
    "--splits",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="A splits.json to use instead of the seeded split: [{\"train\": [...], \"val\": [...], \"test\": [...]}] "
    "(nnU-Net's splits_final.json format, one fold, with a test list).",
)
@click.option("--overwrite", is_flag=True, help="Replace an output folder that holds something else.")
@click.option(
    "--synthetic",
    type=click.Choice(SYNTHETIC_NAMES),
    default="rods",
    show_default=True,
    help="Without TASK_DIR: the generated task to write and prepare: 'rods' (the embedded default) or "
    "'brats-like' (BraTS-sized 4-channel volumes, for memory/capacity checks).",
)
@click.option(
    "--cases",
    type=click.IntRange(min=MIN_CASES),
    default=None,
    help=f"Without TASK_DIR: number of generated cases, at least {MIN_CASES} so validation and test are not empty. "
    "Default: 48 (rods), 20 (brats-like).",
)
@click.option(
    "--shape",
    type=ShapeParam(),
    default=None,
    metavar="X,Y,Z",
    help="Without TASK_DIR: volume shape of the generated task in voxels. Default: 32,32,96 (rods), "
    "240,240,155 (brats-like).",
)
@click.option("--add", is_flag=True,
              help="Add the new and corrected cases of TASK_DIR to the prepared dataset at --out, with its recorded "
                   "preprocessing and statistics; existing cases keep their split, the rest is not prepared again. "
                   "Without TASK_DIR: the task folder the dataset was prepared from.")
@click.option("--add-split", type=click.Choice(("train", "val", "test")), default="train", show_default=True,
              help="With --add: the split new cases go to.")
@library_errors
def prepare(
    task_dir: Optional[Path],
    out_dir: Path,
    reader: str,
    spacing,
    crop_foreground: bool,
    seed: int,
    splits: Optional[Path],
    overwrite: bool,
    synthetic: str,
    cases: Optional[int],
    shape,
    add: bool,
    add_split: str,
) -> None:
    """Check and preprocess an MSD task or nnU-Net v2 dataset folder into a prepared dataset.

    TASK_DIR is a Medical Segmentation Decathlon task folder (dataset.json with 'modality' and 'training',
    imagesTr/, labelsTr/) or an nnU-Net v2 dataset folder as it is (DatasetXXX_Name: dataset.json with
    'channel_names', 'labels', 'file_ending'; imagesTr/<case>_0000.nii.gz per channel). The split is written to
    splits.json in the prepared folder, where it may be edited; --splits brings one. Without TASK_DIR,
    a generated task is written beside the output folder (from --seed, no download) and prepared: the embedded
    default (two rods told apart only by their length), or with --synthetic brats-like a BraTS-sized capacity
    task of any number of cases (--cases, --shape) to check that training memory stays flat as a dataset grows.
    Every problem of the task is reported at once; nothing is written until all cases pass.

    \b
    Examples:
      medseg-mem prepare                                  # embedded default -> ./medseg-work/prepared
      medseg-mem prepare ../data/Task04_Hippocampus --out medseg-work/hippocampus --spacing median
      medseg-mem prepare nnUNet_raw/Dataset004_Hippocampus --out medseg-work/hippo --splits my_splits.json
      medseg-mem prepare --synthetic brats-like --cases 40 --out medseg-work/brats40
      medseg-mem prepare --synthetic brats-like --cases 6 --shape 96,96,64 --out medseg-work/brats-small
      medseg-mem prepare ../data/Task04_Hippocampus --out medseg-work/hippocampus --add   # new/corrected cases
    """
    if add:
        return add_cases(task_dir, out_dir, add_split)
    if task_dir is not None and synthetic != "rods":
        raise click.UsageError(
            f"--synthetic {synthetic} generates a task, so it takes no TASK_DIR; got TASK_DIR {str(task_dir)!r}. "
            "Drop TASK_DIR or --synthetic."
        )
    from medseg_mem.core.prepare_config import PrepareConfig
    from medseg_mem.data.prepare import prepare as run_prepare

    config = PrepareConfig(
        task_dir=task_dir,
        out_dir=out_dir,
        reader=reader,
        spacing=spacing,
        crop_foreground=crop_foreground,
        seed=seed,
        overwrite=overwrite,
        splits=splits,
        synthetic=synthetic,
        cases=cases,
        shape=shape,
    )
    summary = run_prepare(config, warn=lambda line: click.echo(line, err=True))
    click.echo(summary.line())


ADD_REFUSES = ("overwrite", "splits", "synthetic", "cases", "shape", "seed")
ADD_POLICY = ("reader", "spacing", "crop_foreground")


def add_cases(task_dir: Optional[Path], out_dir: Path, split: str) -> None:
    """``prepare --add``: refuse the options that only make a new dataset, pass the preprocessing ones the user typed
    (each must match the dataset's record), and call :func:`medseg_mem.data.add.add_cases`."""
    from medseg_mem.cli.run import given
    from medseg_mem.data.add import add_cases as run_add

    ctx = click.get_current_context()
    typed = [name for name in ctx.params if given(ctx, name)]
    refused = [name for name in ADD_REFUSES if name in typed]
    if refused:
        option = "--" + refused[0].replace("_", "-")
        raise click.UsageError(f"{option} makes a new prepared dataset; --add extends the one at --out with its own "
                               f"settings and split: drop {option} (or drop --add to prepare anew)")
    policy = {name: ctx.params[name] for name in ADD_POLICY if name in typed}
    summary = run_add(task_dir, out_dir, split, policy, warn=lambda line: click.echo(line, err=True))
    click.echo(summary.line())
