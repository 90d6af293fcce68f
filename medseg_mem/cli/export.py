"""``medseg-mem export``: write a trained run into a MONAI bundle folder (:func:`medseg_mem.export.export_bundle`)."""

from __future__ import annotations

from pathlib import Path

import click

from medseg_mem.cli.common import library_errors

#: Export formats; ``bundle``: the run's weights and metadata into ``bundles/<variant>`` (or a copy of it).
EXPORT_FORMATS = ("bundle",)


@click.command()
@click.option("--format", "export_format", type=click.Choice(EXPORT_FORMATS), default="bundle", show_default=True,
              help="bundle: models/*.pt and configs/metadata.json of a MONAI bundle.")
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path),
              help="A run folder (medseg-work/runs/<run id>) or any .pt in it.")
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="The bundle of the run's variant, e.g. bundles/patch.")
@library_errors
def export(export_format, checkpoint, bundle_dir) -> None:
    """Export a trained run so MONAI's bundle tools (verify_net_in_out, ckpt_export) can use it.

    Writes models/model.pt (the last stage, the bundle's network_def), models/<stage>.pt for earlier stages
    (the cascade's stage1.pt) and rewrites configs/metadata.json's inputs, outputs and recipe from the run.

    \b
    Example:
      medseg-mem export --format bundle --checkpoint medseg-work/runs/<run id> --bundle bundles/patch
    """
    from medseg_mem.export import export_bundle

    click.echo(export_bundle(checkpoint, bundle_dir).line())
