"""Where prepared data, runs and results live: ``$MEDSEG_MEM_HOME`` when it is set, else ``./medseg-work``.

Like nnU-Net's ``nnUNet_raw``/``nnUNet_results`` and MONAI's ``MONAI_DATA_DIRECTORY``, one environment variable
moves the work folder, so every command finds the same prepared dataset, runs and results CSV from any directory.
The variable is read when a command runs (not when the package is imported), so a test or a wrapper script can set
it for one call. A path given on the command line always wins.

Example:
    >>> import os
    >>> os.environ["MEDSEG_MEM_HOME"] = "/data/medseg"  # doctest: +SKIP
    >>> default_runs()  # doctest: +SKIP
    PosixPath('/data/medseg/runs')
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from medseg_mem.core.names import DEFAULT_WORKDIR

#: The environment variable that sets the work folder.
HOME_VARIABLE = "MEDSEG_MEM_HOME"
#: How ``--help`` names a default inside the work folder.
HOME_TEXT = f"${HOME_VARIABLE} or ./{DEFAULT_WORKDIR}"


def work_home() -> Path:
    """The work folder: ``$MEDSEG_MEM_HOME`` (``~`` expanded) when set and not empty, else ``medseg-work``.

    A variable naming a file is not refused here: the command that writes there names the path and the fix.
    """
    value = os.environ.get(HOME_VARIABLE, "").strip()
    return Path(value).expanduser() if value else DEFAULT_WORKDIR


def default_prepared() -> Path:
    """``<work folder>/prepared``: where ``prepare`` writes and ``run`` reads by default."""
    return work_home() / "prepared"


def default_results() -> Path:
    """``<work folder>/results.csv``: the results CSV ``run`` appends to and ``compare`` reads by default."""
    return work_home() / "results.csv"


def default_runs() -> Path:
    """``<work folder>/runs``: the runs folder (``<runs>/<run id>``)."""
    return work_home() / "runs"


def run_folder(value: Union[str, Path]) -> Path:
    """``value`` when that path exists; else, when ``value`` is a run id in the runs folder, that run's folder;
    else ``value`` unchanged (the caller names what is missing).

    Example:
        >>> run_folder("20240101T000000Z-full-000001")  # doctest: +SKIP
        PosixPath('medseg-work/runs/20240101T000000Z-full-000001')
    """
    path = Path(value)
    if path.exists() or len(path.parts) != 1:
        return path
    candidate = default_runs() / path
    return candidate if candidate.exists() else path
