"""Data side of medseg-mem: MSD task reading and checking, preprocessing, the embedded default task and the
prepared-dataset format.

Modules (one concept each):

* :mod:`~medseg_mem.data.msd` - read ``dataset.json`` and check an MSD task, reporting all problems;
* :mod:`~medseg_mem.data.transforms` - the MONAI preprocessing pipeline, rebuilt from plain settings;
* :mod:`~medseg_mem.data.synthetic` - the embedded default task ``Task00_SyntheticRods``;
* :mod:`~medseg_mem.data.prepared` - the prepared-dataset format (``PreparedDataset``, ``Case``);
* :mod:`~medseg_mem.data.prepare` - the ``prepare`` library function behind ``medseg-mem prepare``.

Importing this package is cheap; the names below are imported on first use (torch/MONAI load only then).
The library function is ``medseg_mem.data.prepare.prepare`` (the submodule shares its name).

Example:
    >>> from medseg_mem.data import PreparedDataset  # doctest: +SKIP
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Case": "prepared",
    "PreparedDataset": "prepared",
    "PrepareSummary": "prepare",
    "build_preprocessing": "transforms",
    "read_task": "msd",
    "write_default_task": "synthetic",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'medseg_mem.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"medseg_mem.data.{_EXPORTS[name]}"), name)
