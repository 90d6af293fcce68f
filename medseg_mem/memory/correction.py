"""The planner's correction for one machine and setting (:class:`Calibration`): what a calibration measured
(:mod:`~medseg_mem.memory.calibration`) and the planner applies (:mod:`~medseg_mem.memory.planner`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Tuple


@dataclass(frozen=True)
class Calibration:
    """The planner's correction for one machine and setting (see the module docstring).

    Args:
        multiplier: scale applied to the network-internal live bytes.
        offset_bytes: constant bytes above the tensors: what a first call sets up, allocator slack.
        key: the setting it was fitted for (see :func:`calibration_key`).
        points: the ``(traced network bytes, measured bytes above the rest)`` pairs it was fitted on.
        baseline_bytes: resident bytes of a ``predict``/``run`` process before its first tensor (0: unknown).
    """

    multiplier: float = 1.0
    offset_bytes: int = 0
    key: str = "uncalibrated"
    points: Tuple[Tuple[int, int], ...] = field(default_factory=tuple)
    baseline_bytes: int = 0

    def to_dict(self) -> dict:
        return {**asdict(self), "points": [list(p) for p in self.points]}

    @classmethod
    def from_dict(cls, data: dict) -> "Calibration":
        points = tuple((int(t), int(m)) for t, m in data.get("points", ()))
        return cls(float(data["multiplier"]), int(data["offset_bytes"]), str(data["key"]), points,
                   int(data.get("baseline_bytes", 0)))  # fmt: skip


UNCALIBRATED = Calibration()
