"""``medseg-mem export``: write a trained run into a MONAI bundle folder
(:func:`medseg_mem.export.bundle.export_bundle`) or into ONNX models and their recipe
(:func:`medseg_mem.export.onnx.export_onnx`)."""

from __future__ import annotations

from pathlib import Path

import click

from medseg_mem.cli.common import library_errors

#: Export formats; ``bundle``: the run's weights and metadata into ``bundles/<variant>`` (or a copy of it);
#: ``onnx``: ``<stage>.onnx`` per stage and ``recipe.json`` (``--out``, default ``<run folder>/onnx``).
EXPORT_FORMATS = ("bundle", "onnx")


@click.command()
@click.option("--format", "export_format", type=click.Choice(EXPORT_FORMATS), default="bundle", show_default=True,
              help="bundle: models/*.pt and configs/metadata.json of a MONAI bundle; onnx: <stage>.onnx per "
                   "stage and recipe.json (needs pip install 'medseg-mem[onnx]').")
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path),
              help="A run folder, a run id in $MEDSEG_MEM_HOME/runs (else medseg-work/runs), or any .pt in a run.")
@click.option("--bundle", "bundle_dir", type=click.Path(path_type=Path, file_okay=False),
              help="With --format bundle: the bundle of the run's variant, e.g. bundles/patch.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False),
              help="With --format onnx: the folder to write [the run folder's onnx/, which predict --engine "
                   "onnxruntime reads].")
@library_errors
def export(export_format, checkpoint, bundle_dir, out_dir) -> None:
    """Export a trained run for MONAI's bundle tools (verify_net_in_out, ckpt_export) or for ONNX Runtime.

    --format bundle writes models/model.pt (the last stage, the bundle's network_def), models/<stage>.pt for
    earlier stages (the cascade's stage1.pt) and rewrites configs/metadata.json's inputs, outputs and recipe
    from the run. --format onnx writes <stage>.onnx per stage (float32 image in, logits out, any batch and
    spatial size) and recipe.json (how predict combines them).

    \b
    Examples:
      medseg-mem export --format bundle --checkpoint medseg-work/runs/<run id> --bundle bundles/patch
      medseg-mem export --format onnx --checkpoint medseg-work/runs/<run id>
    """
    from medseg_mem.core.locations import run_folder

    check_targets(export_format, bundle_dir, out_dir)
    checkpoint = run_folder(checkpoint)
    if export_format == "onnx":
        from medseg_mem.export.onnx import export_onnx

        click.echo(export_onnx(checkpoint, out_dir).line())
        return
    from medseg_mem.export.bundle import export_bundle

    click.echo(export_bundle(checkpoint, bundle_dir).line())


def check_targets(export_format: str, bundle_dir, out_dir) -> None:
    """``--bundle`` goes with ``--format bundle`` (and is needed there), ``--out`` with ``--format onnx``.

    Raises:
        click.UsageError: one line naming the option, the format it belongs to and the fix.
    """
    if export_format == "bundle" and out_dir is not None:
        raise click.UsageError("--out only applies to --format onnx; with --format bundle pass --bundle")
    if export_format == "bundle" and bundle_dir is None:
        raise click.UsageError("--format bundle needs --bundle, the bundle of the run's variant (e.g. bundles/patch)")
    if export_format == "onnx" and bundle_dir is not None:
        raise click.UsageError("--bundle only applies to --format bundle; with --format onnx pass --out (or "
                               "nothing: the run folder's onnx/)")  # fmt: skip
