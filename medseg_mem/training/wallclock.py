"""Training to a wall-clock budget: a variant's ``--time-limit`` and ``--snapshots`` marks, shared by its stages.

A variant trains its stages one after another, so one budget B (the time limit, or a snapshot mark) is shared: each
stage gets an equal share of what the stages before it left of B, ``(B - time the earlier stages spent towards B) /
stages left``. A one-stage variant gets all of B; the cascade's stage 1 gets B/2 and stage 2 the rest (more than
half when stage 1 reached its ``--steps`` first). With ``--stage2-guidance predicted`` stage 1 shares its B/2
equally with its fold models (:mod:`~medseg_mem.runner.variant`). Marks are shared by the same rule, so the
cascade's snapshot at mark m is the pair of stage checkpoints that together trained m. A stage's clock counts
everything from its start (validations included, as nnU-Net's), and every stage trains at least one step, even when
the stages before it spent its share. What training did (steps and seconds per stage, whether the clock stopped it,
the snapshots taken) is added to ``run.json`` at the end (:func:`medseg_mem.runner.snapshots.record_training`).

Example:
    >>> train = TrainConfig(time_limit=10, snapshots=(5,))  # doctest: +SKIP
    >>> stage_times(train, [], 2)  # doctest: +SKIP
    StageTimes(limit=300.0, marks={300: 150.0})
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Mapping, Optional, Sequence

from medseg_mem.core.config import TrainConfig

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
