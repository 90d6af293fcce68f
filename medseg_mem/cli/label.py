"""``medseg-mem label``: serve trained runs to 3D Slicer through MONAI Label
(:func:`medseg_mem.label.server.serve`; needs the ``label`` extra)."""

from __future__ import annotations

from pathlib import Path

import click

from medseg_mem.cli.common import library_errors
from medseg_mem.core.names import DEFAULT_LABEL_APP


@click.command()
@click.option("--studies", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Folder of NIfTI scans MONAI Label serves and writes its labels into (<studies>/labels).")
@click.option("--run", "runs", type=click.Path(path_type=Path), multiple=True, required=True,
              help="A trained run folder to serve (repeat: one run per variant).")
@click.option("--app-dir", type=click.Path(path_type=Path, file_okay=False), default=DEFAULT_LABEL_APP,
              show_default=True, help="The app folder: main.py, MONAI Label's logs, and the runs training writes.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every one).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="Port to listen on.")
@library_errors
def label(studies, runs, app_dir, host, port) -> None:
    """Serve trained runs to 3D Slicer's MONAI Label module (until Ctrl-C).

    Each run's variant becomes a model (Auto Segmentation) and a trainer that trains on the labels you save and
    then serves the new run; "Next Sample" offers the scan the model is least sure of. Needs
    pip install 'medseg-mem[label]'. In Slicer, set the MONAI Label server to http://HOST:PORT.

    \b
    Example:
      medseg-mem label --studies my_scans_copy --run medseg-work/runs/<run id>
    """
    from medseg_mem.label.server import serve

    serve(app_dir, studies, runs, host, port)
