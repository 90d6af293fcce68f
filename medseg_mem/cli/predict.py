"""``medseg-mem predict``: parse options, call :func:`medseg_mem.predict.predict`, report failed scans by name."""

from __future__ import annotations

from pathlib import Path

import click

from medseg_mem.cli.common import library_errors, parse_overlap
from medseg_mem.names import DEVICE_NAMES, PRECISION_NAMES


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="INPUT...")
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path),
              help="A run folder (medseg-work/runs/<run id>) or any .pt in it; every stage's best.pt is used.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder for the label maps (<name>_seg.nii.gz), created if missing.")
@click.option("--overwrite", is_flag=True, help="Replace label maps that exist already.")
@click.option("--device", type=click.Choice(DEVICE_NAMES), default="auto", show_default=True,
              help="auto (cuda if available), cpu or cuda.")
@click.option("--precision", type=click.Choice(PRECISION_NAMES), default="fp32", show_default=True,
              help="fp32, or autocast the networks to bf16 / fp16 (about half the memory).")
@click.option("--overlap", type=float, default=0.0, show_default=True, callback=parse_overlap,
              help="Fraction of a slab shared with the next, 0-0.5, blended with Gaussian weights.")
@click.option("--sw-batch-size", type=click.IntRange(min=1), default=1, show_default=True,
              help="Slabs per network call.")
@click.option("--channels-last/--no-channels-last", default=True, show_default=True,
              help="Channels-last network layout (less memory and faster on CPU; labels agree to rounding).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@library_errors
def predict(inputs, checkpoint, out_dir, overwrite, device, precision, overlap, sw_batch_size, channels_last,
            quiet) -> None:  # fmt: skip
    """Segment NIfTI scans (files or folders; 3D, or 4D with channels last) with a trained run.

    Each INPUT gets OUT/<name>_seg.nii.gz: uint8 labels with exactly the input's shape and affine, so it
    overlays in 3D Slicer or ITK-SNAP. Scans that fail are named; the others are still written.

    \b
    Example:
      medseg-mem predict --checkpoint medseg-work/runs/<run id> scan.nii.gz --out predictions/
    """
    from medseg_mem.config import InferenceConfig
    from medseg_mem.predict import predict as run_predict

    inference = InferenceConfig(sw_batch_size, overlap, precision, channels_last)
    summary = run_predict(checkpoint, inputs, out_dir, overwrite=overwrite, device=device, progress=not quiet,
                          inference=inference)  # fmt: skip
    for _scan, reason in summary.failed:
        click.echo(f"failed: {reason}", err=True)
    click.echo(summary.line())
    if not summary.ok:
        names = ", ".join(str(scan) for scan, _ in summary.failed)
        total = len(summary.written) + len(summary.failed)
        raise click.ClickException(f"{len(summary.failed)} of {total} scan(s) failed: {names}")
