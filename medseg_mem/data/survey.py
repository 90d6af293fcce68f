"""The survey before ``prepare`` writes anything: dataset statistics that the preprocessing settings need.

Only needed when the settings ask for the median spacing or hold a CT channel (nnU-Net's clipping and
z-scoring with the foreground statistics of the training set): every case is loaded and checked once with
the pipeline's loading steps, and the statistics are computed from what was loaded.
"""

from __future__ import annotations

from typing import Dict, Iterable, List

import numpy as np

from medseg_mem.data import msd, transforms
from medseg_mem.core.errors import DatasetError


def _loader_settings(settings: dict) -> dict:
    """Settings whose pipeline needs no statistics (only its loading steps are used by the survey)."""
    plain = [{"scheme": "zscore_nonzero"} for _ in settings["normalization"]]
    return {**settings, "spacing_rule": "native", "spacing": None, "normalization": plain}


def survey(task: msd.MSDTask, settings: dict, cases: Iterable[msd.CaseEntry]) -> dict:
    """Load and check each of ``cases`` (the task's, perhaps behind a progress bar) once; return ``settings``
    with the median spacing and the CT statistics filled in.

    Raises:
        DatasetError: listing every case that cannot be loaded, or a CT channel without foreground.
    """
    loader_settings = _loader_settings(settings)
    pipeline = transforms.build_preprocessing(loader_settings, with_label=True)
    ct = transforms.ct_channels(settings)
    samples: Dict[int, List[np.ndarray]] = {c: [] for c in ct}
    spacings, problems = [], []
    for case in cases:
        data, found = msd.load_case(pipeline, loader_settings, case, task)
        problems += found
        if data is None:
            continue
        spacings.append(transforms.ras_spacing(np.asarray(data["image"].affine)))
        for channel in ct:
            samples[channel].append(transforms.foreground_sample(data["image"][channel], data["label"][0]))
    if problems:
        raise DatasetError(problems, where=str(task.root))
    return _with_statistics(settings, spacings, samples, task)


def _with_statistics(settings: dict, spacings, samples: Dict[int, List[np.ndarray]], task: msd.MSDTask) -> dict:
    settings = {**settings, "normalization": [dict(n) for n in settings["normalization"]]}
    if settings["spacing_rule"] == "median":
        settings["spacing"] = transforms.median_spacing(spacings)
    for channel, channel_samples in samples.items():
        stats = transforms.ct_statistics(channel_samples)
        if stats is None:
            problem = f"channel {channel} is CT but no label has foreground (> 0) voxels to compute its statistics"
            raise DatasetError([problem], where=str(task.root))
        settings["normalization"][channel] = stats
    return settings
