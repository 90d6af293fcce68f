"""What a variant's training reached on the wall clock, filed in ``run.json``: the snapshots it took at its
``--snapshots`` marks (each stage's checkpoint at its share of the mark, :mod:`~medseg_mem.training.wallclock`),
the marks it missed, and per stage the steps, seconds and training peak memory (:func:`record_training`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Tuple

from medseg_mem.core.config import TrainConfig
from medseg_mem.runner.settings import write_run_record
from medseg_mem.training.wallclock import mark_seconds, snapshot_path, spent_towards


@dataclass(frozen=True)
class Snapshot:
    """A variant as it was at a mark: each stage's checkpoint, and the steps and seconds they had trained.

    Args:
        mark: the mark, in seconds of training.
        paths: ``{stage name: checkpoint}`` (``snap-<mark>s.pt``, or ``best.pt`` of a stage that ended before).
        steps, seconds: summed over the stages, up to the mark.
    """

    mark: int
    paths: Dict[str, Path]
    steps: int
    seconds: float


def variant_snapshots(train: TrainConfig, outcomes: Mapping[str, object]) -> Tuple[List[Snapshot], List[int]]:
    """The snapshots a trained variant reached, and the marks it did not reach (its training ended first).

    A mark is reached when the last stage passed its share of it; an earlier stage that ended before its share
    stands for the mark with its final ``best.pt``.

    Args:
        train: the run's :class:`~medseg_mem.core.config.TrainConfig`.
        outcomes: ``{stage name: StageOutcome}`` in stage order.
    """
    reached, missed = [], []
    last = list(outcomes.values())[-1]
    for mark in map(mark_seconds, train.snapshots):
        if mark not in last.snapshots:
            missed.append(mark)
            continue
        taken = {name: o.snapshots.get(mark) for name, o in outcomes.items()}
        paths = {name: snapshot_path(o.best_path.parent, mark) if taken[name] else o.best_path
                 for name, o in outcomes.items()}  # fmt: skip
        steps = sum(int(taken[name]["step"]) if taken[name] else o.steps for name, o in outcomes.items())
        seconds = sum(spent_towards(o, mark) for o in outcomes.values())
        reached.append(Snapshot(mark, paths, steps, seconds))
    return reached, missed


def describe(train: TrainConfig) -> str:
    """``", time limit 15 min, snapshots at 5, 10 min"`` (empty without either)."""
    text = "" if train.time_limit is None else f", time limit {train.time_limit:g} min"
    if train.snapshots:
        text += f", snapshots at {', '.join(f'{m:g}' for m in train.snapshots)} min"
    return text


TRAINING_KEYS = ("trained", "snapshots_taken")


def recorded_training(run_dir: Path) -> dict:
    """What :func:`record_training` added to an existing ``run.json`` (nothing for a new run), so rewriting the
    record when a run resumes keeps it until the resumed training records its own."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        return {}
    record = json.loads(path.read_text(encoding="utf-8"))
    return {key: record[key] for key in TRAINING_KEYS if key in record}


def with_recorded_peaks(outcomes: Mapping[str, object], earlier: dict) -> Dict[str, object]:
    """``outcomes`` with each stage's ``peak_bytes`` raised to what an earlier process of a resumed run recorded
    for it (``earlier``: :func:`recorded_training` read before training), so resuming a finished stage does not
    replace its training peak with the little its resumption needed."""
    recorded = earlier.get("trained", {})
    return {name: replace(o, **{key: max(getattr(o, key), int(recorded.get(name, {}).get(key, 0)))
                                for key in ("peak_bytes", "process_peak_bytes")})
            for name, o in outcomes.items()}  # fmt: skip


def record_training(run_dir: Path, info: dict, model, train: TrainConfig, outcomes: Mapping[str, object],
                    echo: Callable[[str], None]) -> List[Snapshot]:  # fmt: skip
    """Add what training did to ``run.json`` (``trained``: steps, seconds, ``stopped_by_time`` and the training
    ``peak_bytes`` and ``process_peak_bytes`` per stage; ``snapshots_taken``), say it when the wall clock had a say,
    and return the snapshots the variant reached."""
    snapshots, missed = variant_snapshots(train, outcomes)
    trained = {stage: {"steps": o.steps, "seconds": round(o.seconds, 2), "stopped_by_time": o.steps < train.steps,
                       "peak_bytes": o.peak_bytes, "process_peak_bytes": o.process_peak_bytes}
               for stage, o in outcomes.items()}  # fmt: skip
    taken = [{"budget_seconds": s.mark, "steps": s.steps, "seconds": round(s.seconds, 2)} for s in snapshots]
    write_run_record(run_dir, {**info, "trained": trained, "snapshots_taken": taken}, model, train)
    name, seconds = info["variant"], sum(o.seconds for o in outcomes.values())
    if train.time_limit is not None or train.snapshots:
        steps = ", ".join(f"{stage} {o.steps}" for stage, o in outcomes.items())
        why = "time limit" if any(t["stopped_by_time"] for t in trained.values()) else "--steps"
        echo(f"[{name}] trained {seconds / 60:.2f} min, steps {steps} (stopped by {why})")
    for mark in missed:
        echo(f"[{name}] snapshot at {mark / 60:g} min not reached: training ended at {seconds / 60:.2f} min "
             "(--steps); the final rows stand for it")
    return snapshots
