"""Training to a wall-clock budget: a variant's ``--time-limit`` and ``--snapshots`` marks, shared by its stages.

A variant trains its stages one after another, so one budget B (the time limit, or a snapshot mark) is shared: each
stage gets an equal share of what the stages before it left of B, ``(B - time the earlier stages spent towards B) /
stages left``. A one-stage variant gets all of B; the cascade's stage 1 gets B/2 and stage 2 the rest (more than
half when stage 1 reached its ``--steps`` first). With ``--stage2-guidance predicted`` stage 1 shares its B/2
equally with its fold models (:mod:`~medseg_mem.runner.variant`). Marks are shared by the same rule, so the
cascade's snapshot at mark m is the pair of stage checkpoints that together trained m. A stage's clock counts
everything from its start (validations included, as nnU-Net's), and every stage trains at least one step, even when
the stages before it spent its share. What training did (steps and seconds per stage, whether the clock stopped it,
the snapshots taken) is added to ``run.json`` at the end (:func:`record_training`).

Example:
    >>> train = TrainConfig(time_limit=10, snapshots=(5,))  # doctest: +SKIP
    >>> stage_times(train, [], 2)  # doctest: +SKIP
    StageTimes(limit=300.0, marks={300: 150.0})
"""

from __future__ import annotations

import json

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from medseg_mem.core.config import TrainConfig
from medseg_mem.runner.settings import write_run_record

Clock = Callable[[], float]
"""Seconds from an arbitrary origin (``time.perf_counter``; tests pass a fake one)."""


def mark_seconds(minutes: float) -> int:
    """A mark in minutes as the whole seconds that name its snapshot (``snap-<seconds>s.pt``, ``budget_seconds``)."""
    return round(minutes * 60)


def snapshot_path(folder: Path, mark: int) -> Path:
    """Where a stage keeps its best checkpoint at ``mark`` seconds."""
    return Path(folder) / f"snap-{mark}s.pt"


@dataclass(frozen=True)
class StageTimes:
    """One stage's share of its variant's wall clock, in seconds of the stage's own training time.

    Args:
        limit: stop once the stage has trained this long (``None``: train ``--steps``).
        marks: ``{variant mark in seconds: stage seconds}``: keep a snapshot once the stage has trained that long.
    """

    limit: Optional[float] = None
    marks: Mapping[int, float] = field(default_factory=dict)

    @property
    def timed(self) -> bool:
        """True when the clock decides anything (a limit or a mark)."""
        return self.limit is not None or bool(self.marks)

    def spent(self, elapsed: float) -> float:
        """The fraction of the limit spent after ``elapsed`` seconds, at most 1 (0 without a limit)."""
        if self.limit is None:
            return 0.0
        return min(1.0, elapsed / self.limit) if self.limit > 0 else 1.0

    def out_of_time(self, elapsed: float) -> bool:
        return self.limit is not None and elapsed >= self.limit

    def due(self, elapsed: float, taken: Mapping[int, object]) -> List[int]:
        """The marks passed after ``elapsed`` seconds whose snapshot is not ``taken`` yet."""
        return [mark for mark, at in sorted(self.marks.items()) if mark not in taken and elapsed >= at]


def spent_towards(outcome, mark: Optional[int]) -> float:
    """Seconds a finished stage spent towards ``mark`` (its snapshot's time, or all of it when it ended first);
    ``mark=None``: towards the time limit, i.e. all of it."""
    taken = outcome.snapshots.get(mark) if mark is not None else None
    return float(taken["seconds"]) if taken else float(outcome.seconds)


def share(budget: float, earlier: Sequence[float], stages_left: int) -> float:
    """An equal share of what the earlier stages left of ``budget`` (may be <= 0: the stage then trains one step)."""
    return (budget - sum(earlier)) / stages_left


def stage_times(train: TrainConfig, earlier: Sequence, n_stages: int) -> StageTimes:
    """The wall clock of the next stage of a variant of ``n_stages``, after the ``earlier`` stages' outcomes.

    Args:
        train: the run's :class:`~medseg_mem.core.config.TrainConfig` (``time_limit`` and ``snapshots`` in minutes).
        earlier: :class:`~medseg_mem.training.loop.StageOutcome` of the stages trained before, in order.
        n_stages: the variant's number of stages.
    """
    left = n_stages - len(earlier)
    limit = None
    if train.time_limit is not None:
        limit = share(train.time_limit * 60, [spent_towards(o, None) for o in earlier], left)
    marks = {}
    for mark in map(mark_seconds, train.snapshots):
        marks[mark] = share(mark, [spent_towards(o, mark) for o in earlier], left)
    return StageTimes(limit, marks)


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
