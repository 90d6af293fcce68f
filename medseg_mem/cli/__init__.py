"""The ``medseg-mem`` command line: a thin skin that parses, validates and calls one library function.

Each command lives in its own module and imports torch/MONAI only inside its function body, so
``medseg-mem --help`` returns instantly.
"""

from __future__ import annotations

import click

from medseg_mem import __version__
from medseg_mem.cli import compare, export, label, plan, predict, prepare, run, show, suggest

#: Every subcommand, in ``--help`` order; each module imports only click and light modules at import time.
COMMANDS = (prepare.prepare, run.run, compare.compare, plan.plan, predict.predict, suggest.suggest, export.export,
            show.show, label.label)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="medseg-mem")
def main() -> None:
    """Segment large 3D scans with the U-Net variant that fits your memory.

    Typical use: ``medseg-mem prepare && medseg-mem run --variant all`` (works in ./medseg-work/,
    or in the folder $MEDSEG_MEM_HOME names: prepared data, runs and results.csv live there).
    """


for _command in COMMANDS:
    main.add_command(_command)
