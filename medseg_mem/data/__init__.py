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

from medseg_mem.core.lazy import lazy_attributes

_EXPORTS = {
    "Case": "prepared",
    "PreparedDataset": "prepared",
    "PrepareSummary": "prepare",
    "build_preprocessing": "transforms",
    "read_task": "msd",
    "write_default_task": "synthetic",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_attributes(__name__, _EXPORTS)
