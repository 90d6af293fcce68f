"""Start MONAI Label on medseg-mem runs: the app folder it needs and the command that serves it.

MONAI Label writes into its app folder (``model/``, ``logs/``, ``lib/``, ``bin/``) and into the studies folder
(``datastore_v2.json``, ``labels/``): :func:`write_app` writes a folder of the user's for the app
(``main.py``, one import), and the studies folder must be one MONAI Label may write into. Free of ``monailabel``.

Example:
    >>> command = server_command(write_app(Path("medseg-work/label")), Path("studies"),
    ...                          [Path("medseg-work/runs/<run id>")], port=8000)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import List, Sequence

from medseg_mem.core.errors import MedsegError
from medseg_mem.core.files.atomic import write_text_atomic
from medseg_mem.label import MISSING
from medseg_mem.label.served import RUNS_KEY, served_runs

#: The app's ``main.py``: MONAI Label serves the class in it whose base is ``MONAILabelApp``.
MAIN = ('"""MONAI Label app of medseg-mem (written by `medseg-mem label`)."""\n\n'
        "from medseg_mem.label.app import MedsegMemApp  # noqa: F401\n")


def check_installed() -> None:
    """Raise a one-line error when the ``label`` extra is not installed.

    Raises:
        MedsegError: ``monailabel`` cannot be imported, with the install command.
    """
    if importlib.util.find_spec("monailabel") is None:
        raise MedsegError(MISSING)


def write_app(app_dir: Path) -> Path:
    """Write the app's ``main.py`` into ``app_dir`` (created when missing); return ``app_dir``."""
    app_dir = Path(app_dir)
    if app_dir.exists() and not app_dir.is_dir():
        raise MedsegError(f"--app-dir {app_dir}: is a file; name a folder for MONAI Label's app")
    app_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(app_dir / "main.py", MAIN)
    return app_dir


def server_command(app_dir: Path, studies: Path, runs: Sequence[Path], host: str = "127.0.0.1",
                   port: int = 8000) -> List[str]:  # fmt: skip
    """``python -m monailabel.main start_server ...`` serving ``runs`` from ``app_dir`` on ``studies``.

    Raises:
        MedsegError: ``studies`` is not a folder.
    """
    if not Path(studies).is_dir():
        raise MedsegError(f"--studies {studies}: not a folder; give a folder of NIfTI scans MONAI Label may write "
                          "into (its labels go to <studies>/labels)")  # fmt: skip
    return [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(Path(app_dir).resolve()),
            "--studies", str(Path(studies).resolve()), "--conf", RUNS_KEY,
            ",".join(str(Path(run).resolve()) for run in runs), "--host", host, "--port", str(port)]  # fmt: skip


def serve(app_dir: Path, studies: Path, runs: Sequence[Path], host: str = "127.0.0.1", port: int = 8000) -> None:
    """Check the extra and the runs, write the app, then become the MONAI Label server (``os.execv``).

    Raises:
        MedsegError: the ``label`` extra is missing, a run is not a trained run (or two share a variant), or
            ``studies`` / ``app_dir`` is unusable; nothing is started then.
    """
    check_installed()
    served_runs(runs)
    command = server_command(write_app(app_dir), studies, runs, host, port)
    os.execv(sys.executable, command)
