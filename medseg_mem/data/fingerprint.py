"""A prepared dataset's fingerprint: a short digest of what defines the dataset, so runs are kept per dataset.

Two prepared folders share a fingerprint exactly when they hold the same task (``dataset.json`` name), channels
(modalities), classes, preprocessing settings, case ids and split: runs on them are comparable and interchangeable.
Where the folder lives, when it was prepared and the source folder's path do not count, so a dataset prepared
again from the same data (or moved) keeps its fingerprint, while a different task, another ``--spacing`` or an
edited ``splits.json`` gives another. ``run`` records it in ``run.json`` and the results CSV
(``dataset_fingerprint``); ``compare`` groups by it and ``predict --variant`` picks only runs of one dataset.

Example:
    >>> fingerprint(PreparedDataset.open(Path("medseg-work/prepared")))  # doctest: +SKIP
    '3f9a1c0b7d2e'
"""

from __future__ import annotations

import hashlib
import json

#: Hex digits kept of the SHA-256: 48 bits, ample for the datasets one user holds, short enough to read.
LENGTH = 12
#: What ``compare`` calls rows written before runs recorded a fingerprint.
UNKNOWN = "unknown dataset"


def fingerprint(dataset) -> str:
    """The fingerprint of a :class:`~medseg_mem.data.prepared.PreparedDataset` (see the module docstring)."""
    return fingerprint_of(dataset.name, dataset.modalities, dataset.class_names,
                          dataset.manifest.get("preprocessing", {}), dataset.split)  # fmt: skip


def fingerprint_of(name: str, modalities, class_names, preprocessing: dict, split: dict) -> str:
    """The fingerprint of a dataset's defining parts; the split's lists are compared as sets of case ids.

    Example:
        >>> fingerprint_of("Rods", ["MRI"], ["background", "rod"], {}, {"train": ["b", "a"], "val": [], "test": []})
        ... == fingerprint_of("Rods", ["MRI"], ["background", "rod"], {}, {"train": ["a", "b"], "val": [], "test": []})
        True
    """
    defining = {
        "name": str(name),
        "modalities": [str(m) for m in modalities],
        "class_names": [str(c) for c in class_names],
        "preprocessing": preprocessing,
        "split": {key: sorted(map(str, split.get(key, ()))) for key in ("train", "val", "test")},
    }
    text = json.dumps(defining, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:LENGTH]


def dataset_label(name: str, digest: str) -> str:
    """How a dataset is named in tables and messages: ``Task04_Hippocampus [3f9a1c0b7d2e]``, or
    ``Task04_Hippocampus [unknown dataset]`` for rows written before fingerprints were recorded."""
    return f"{name} [{digest or UNKNOWN}]"
