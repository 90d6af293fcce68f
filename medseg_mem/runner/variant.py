"""Train every stage of one variant, in order, each to its share of the wall clock, with its training peak memory.

The cascade's stage 2 is guided by stage 1. With ``--stage2-guidance predicted`` the stage-1 fold models train
right after stage 1, in stage 1's share of the clock (:mod:`~medseg_mem.runner.out_of_fold`), and stage 2
trains and validates on their predictions; their outcomes are returned too (``stage1/fold-<i>``), so the run's
steps, seconds and memory count them, but only the variant's own stages are evaluated.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from medseg_mem import __version__
from medseg_mem.data.fingerprint import fingerprint
from medseg_mem.data.prepared import PreparedDataset
from medseg_mem.core.errors import OptionError
from medseg_mem.memory import rss
from medseg_mem.memory.measure import InProcessPeak
from medseg_mem.training.loop import StageJob, StageOutcome, train_stage
from medseg_mem.runner.out_of_fold import predicted_guidance
from medseg_mem.training.sampling import StageData
from medseg_mem.training.wallclock import Clock, StageTimes, stage_times
from medseg_mem.variants import get_variant


def train_variant(
    name, run_dir, dataset, model, train, device, progress, weights=None, clock: Clock = time.perf_counter,
    init: Optional[Dict[str, Path]] = None,
) -> Dict[str, StageOutcome]:
    """Train each stage of variant ``name`` (loss class ``weights``, if any), each to its share of the time limit
    and snapshot marks (:func:`~medseg_mem.training.wallclock.stage_times`); return ``{stage name: outcome}``
    in training order, with the fold models of ``--stage2-guidance predicted`` after the stage they stand for.
    ``init`` maps a stage name to the checkpoint it starts from (``run --init-from``)."""
    stages = get_variant(name).stages()
    outcomes: Dict[str, StageOutcome] = {}
    guidance: Optional[Path] = None
    since = resident_now(device)  # every stage's peak counts from here: stages of one variant compare alike
    for index, stage in enumerate(stages):
        feeds = feeds_predictions(stages, index, train)
        times = stage_times(train, list(outcomes.values()), len(stages) + len(outcomes) - index)
        job = StageJob(
            variant=name, stage=stage, in_channels=stage.in_channels(dataset.in_channels, dataset.num_classes, model),
            num_classes=dataset.num_classes, model=model, train=train,
            data=StageData(dataset, stage, model, train, stage_index=index,
                           guidance=guidance if stage.guided else None),
            folder=run_dir / stage.name, device=device, meta=checkpoint_meta(dataset), seed_offset=index,
            class_weights=weights, times=divided(times, train.guidance_folds + 1) if feeds else times,
            init_weights=(init or {}).get(stage.name),
        )  # fmt: skip
        outcomes[stage.name] = measured(job, progress, clock, since)
        if feeds:
            guidance, folds = predicted_guidance(job, outcomes[stage.name].best_path, run_dir,
                                                 lambda fold: measured(fold, progress, clock, since))  # fmt: skip
            outcomes.update({f"{stage.name}/fold-{i}": outcome for i, outcome in enumerate(folds)})
    return outcomes


def check_snapshots(names: List[str], train) -> None:
    """Refuse ``--snapshots`` for a cascade whose stage 2 trains on predicted guidance: its fold models train in
    stage 1's share of the clock, so no pair of checkpoints stands for the cascade at a mark.

    Raises:
        OptionError: naming ``--snapshots``, the rule and the marks.
    """
    guided = any(stage.guided for name in names for stage in get_variant(name).stages())
    if train.snapshots and guided and train.stage2_guidance == "predicted":
        rule = ("cannot be taken of a cascade trained with --stage2-guidance predicted (real data's default; its "
                "fold models share stage 1's clock): add --stage2-guidance truth, or leave the cascade out")
        raise OptionError("--snapshots", rule, train.snapshots)


def feeds_predictions(stages, index: int, train) -> bool:
    """True when stage ``index`` must provide predicted guidance for the guided stage after it."""
    following = stages[index + 1] if index + 1 < len(stages) else None
    return following is not None and following.guided and train.stage2_guidance == "predicted"


def divided(times: StageTimes, models: int) -> StageTimes:
    """A stage's time share split equally between ``models`` networks (stage 1 and its fold models)."""
    return StageTimes(None if times.limit is None else times.limit / models,
                      {mark: at / models for mark, at in times.marks.items()})  # fmt: skip


def resident_now(device) -> int:
    """Memory the process holds now, after handing back what is free (so an earlier variant's or stage's freed
    memory cannot absorb the next one's growth): CPU resident memory after ``malloc_trim``, or CUDA memory
    reserved by the caching allocator after ``empty_cache``."""
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        return int(torch.cuda.memory_reserved(device))
    rss.release_freed_heap()
    return rss.current_bytes()


def measured(job: StageJob, progress: bool, clock: Clock, since: int) -> StageOutcome:
    """:func:`train_stage` with its peak memory (:class:`InProcessPeak`: CPU resident memory, CUDA memory reserved)
    above ``since`` (:func:`resident_now` before the variant's first stage) in ``peak_bytes``: what the variant's
    training had added at the stage's peak, whatever earlier stages of this process left allocated or cached."""
    held = max(0, resident_now(job.device) - since)
    with InProcessPeak(job.device.type, resident_bytes=held) as peak:
        outcome = train_stage(job, progress=progress, clock=clock)
    return dataclasses.replace(outcome, peak_bytes=peak.peak_bytes, process_peak_bytes=peak.process_bytes)


def stage_names(outcomes: Dict[str, StageOutcome], variant: str) -> List[str]:
    """The variant's own stages among ``outcomes`` (not the fold models)."""
    return [stage.name for stage in get_variant(variant).stages() if stage.name in outcomes]


def checkpoint_meta(dataset: PreparedDataset) -> dict:
    """What predict needs to preprocess new scans and name the classes (stored in every checkpoint)."""
    manifest = dataset.manifest
    return {
        "dataset": dataset.name,
        "dataset_fingerprint": fingerprint(dataset),
        "class_names": list(dataset.class_names),
        "modalities": list(dataset.modalities),
        "preprocessing": manifest.get("settings", manifest.get("preprocessing", {})),
        "package_version": __version__,
    }
