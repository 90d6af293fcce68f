"""One path from a budget to a decision, for ``plan``, ``run``'s guard and ``--variant auto``, ``predict``'s guard:
budget -> lower bound -> calibration -> plan -> fits or not.

:class:`MemoryCheck` plans on one device against one :class:`Budget`. Each plan first runs uncalibrated (a meta
trace: milliseconds to a second) as a lower bound of the process's peak - the trace at the smallest multiplier a
calibration may fit, plus what this process holds now, the one that will run the work - and a plan whose lower
bound exceeds the budget is answered without calibrating. Otherwise the machine's calibration for the setting is
read from the user's cache, or measured once (10-30 s, said on ``announce``, within the budget) and the plan made
with it. A budget too small to calibrate in falls back to the lower bound's figures.

Example:
    >>> check = MemoryCheck("cpu", resolve_budget(8 * 10**9, "cpu"))  # doctest: +SKIP
    >>> plan = check.inference("patch", (1, 512, 512, 300), 3, ModelConfig(), InferenceConfig())  # doctest: +SKIP
    >>> plan.fits, format_bytes(plan.process_bytes)  # doctest: +SKIP
    (True, '1.35 GiB')
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

from medseg_mem.core.errors import MedsegError
from medseg_mem.core.units import format_bytes

LOWEST_MULTIPLIER = 0.8  # the smallest multiplier a calibration may fit (calibration.MULTIPLIER_RANGE)
HIGHEST_MULTIPLIER = 2.0  # the largest (calibration.MULTIPLIER_RANGE)
UPPER_OFFSET = 256 * 2**20  # above every first-call offset measured (13-60 MiB)
UPPER_PROCESS = 768 * 2**20  # above every process baseline measured (340-400 MiB on the development CPU)
LOWER_PREPROCESSING = 0.9  # the whole-scan preprocessing's plan was 1.2-8.7 % over the pipeline's measured peak


class MemoryGuardError(MedsegError):
    """A plan that does not fit the budget; the message names what, the figures and the levers."""


@dataclass(frozen=True)
class Budget:
    """The memory a command may use, and where the figure came from (``--budget`` or the free memory)."""

    bytes: int
    source: str

    def describe(self) -> str:
        return f"{format_bytes(self.bytes)} ({self.source})"


def resolve_budget(given: Optional[int], device: str) -> Budget:
    """``--budget`` when given, else the device's free memory less the margin
    (:func:`~medseg_mem.memory.budget.default_budget`).

    Raises:
        OptionError / MedsegError: CUDA without a device; no budget given and none can be read.
    """
    if given:
        return Budget(int(given), "--budget")
    from medseg_mem.memory.budget import default_budget

    return Budget(*default_budget(device))


class MemoryCheck:
    """Plans against one budget on one device, calibrating each setting at most once (cached per machine).

    Args:
        device: ``cpu`` or ``cuda`` (resolved).
        budget: the memory the work may use.
        announce: receives the calibration's progress lines (default: silent).
        calibration_path: ``plan --calibration``: a calibration file to use instead of the user's cache.
        measure: calibrate when the cache has none (``plan --no-calibrate``: ``False``, raw structural counts).
        training_setup: the training step a training calibration measures
            (``medseg_mem.training.calibration_step.training_setup``; only callers above the training layer pass
            it, and only they plan training).
        upper_bound_first: a plan that fits even at the planner's upper bound (:meth:`upper_bound_calibration`)
            is answered without calibrating (``predict``'s guard, which needs only the verdict).
    """

    def __init__(self, device: str, budget: Budget, announce: Optional[Callable[[str], None]] = None,
                 calibration_path: Optional[Path] = None, measure: bool = True,
                 training_setup: Optional[Callable] = None, upper_bound_first: bool = False) -> None:  # fmt: skip
        self.device, self.budget, self.announce = str(device), budget, announce
        self.calibration_path, self.measure, self.training_setup = calibration_path, measure, training_setup
        self.upper_bound_first = upper_bound_first
        self._traces: dict = {}  # each plan's trace, kept for its other calibrations
        self._calibrations: Dict[Tuple, object] = {}

    def calibration(self, mode: str, precision: str, checkpointing: bool = False, channels_last: bool = False):
        """The machine's calibration for this setting (cached, measured once when missing; see the class)."""
        setting = (mode, precision, bool(checkpointing and mode == "training"), bool(channels_last))
        if setting not in self._calibrations:
            self._calibrations[setting] = self._calibrate(*setting)
        return self._calibrations[setting]

    def _calibrate(self, mode: str, precision: str, checkpointing: bool, channels_last: bool):
        from medseg_mem.memory.calibration import Calibration, CalibrationBudgetError, cached_calibration

        try:
            return cached_calibration(self.calibration_path, self.device, self.measure, self.announce, mode,
                                      precision, checkpointing, channels_last, self._limit(), self.training_setup)
        except CalibrationBudgetError as error:
            if self.announce is not None:
                self.announce(f"note: {error}; planning with the uncalibrated count")
            return Calibration(key="uncalibrated (budget too small to calibrate)", baseline_bytes=self._process())

    def _process(self) -> int:
        """This process's resident size on a CPU device (a lower bound of the process that will run); 0 on CUDA,
        whose budget is device memory, and for raw structural counts (``measure`` off: no process is planned)."""
        from medseg_mem.memory.bound import process_now

        return 0 if self.device.startswith("cuda") or not self.measure else process_now()

    def _limit(self) -> Optional[int]:
        """What the calibration's process may hold: the budget (CPU; on CUDA the budget is device memory)."""
        return None if self.device.startswith("cuda") else self.budget.bytes

    def training(self, variant: str, shape, classes: int, model, train, nproc: int = 1,
                 cases: Optional[int] = None, calibration=None, earlier_networks: int = 0):  # fmt: skip
        """The plan of one training step of ``variant`` (its largest stage) with ``train``'s levers.

        ``train`` is a :class:`~medseg_mem.core.config.TrainConfig` (batch, precision, checkpointing, layout, loader,
        optimizer); ``cases``: the training split's size (the cascade's case cache fills to it at most);
        ``calibration``: plan with this one (e.g. :meth:`lower_bound_calibration`) instead of the setting's;
        ``earlier_networks``: networks the process trained before (see
        :func:`~medseg_mem.memory.planner.first_calls`).
        """
        from medseg_mem.memory.planner import plan_variant

        options = dict(model=model, train=train, nproc=nproc, cases=cases, device=self.device,
                       budget_bytes=self.budget.bytes, earlier_networks=earlier_networks)  # fmt: skip
        setting = ("training", train.precision, train.checkpointing, train.channels_last)
        return self._plan(plan_variant, (variant, shape, classes), options, setting, calibration)

    def inference(self, variant: str, shape, classes: int, model, inference, input_on_disk: bool = False,
                  calibration=None, batch: int = 1, out_of_core: bool = False, preprocessing: int = 0,
                  probabilities: bool = False):  # fmt: skip
        """The plan of ``variant``'s inference of ``batch`` images (``predict`` with ``input_on_disk``, ``run``'s
        evaluation without; ``predict --out-of-core`` with ``out_of_core``); ``calibration`` as in :meth:`training`;
        ``preprocessing``: what ``predict``'s whole-scan preprocessing holds (:mod:`~medseg_mem.memory.preprocessing`),
        planned beside the inference when in memory; ``probabilities``: a resampled run's ``predict``
        (:func:`~medseg_mem.memory.planner.plan_variant`)."""
        from medseg_mem.memory.planner import plan_variant

        options = dict(model=model, inference=inference, input_on_disk=input_on_disk, device=self.device,
                       budget_bytes=self.budget.bytes, batch=batch, out_of_core=out_of_core,
                       preprocessing=preprocessing, probabilities=probabilities)  # fmt: skip
        setting = ("inference", inference.precision, False, inference.channels_last)
        return self._plan(plan_variant, (variant, shape, classes), options, setting, calibration)

    def _plan(self, plan_variant, args, options, setting, calibration):
        """The lower bound; the calibrated plan unless the bound is over the budget already."""
        options = {**options, "traces": self._traces}
        if calibration is not None:
            return plan_variant(*args, calibration=calibration, **options)
        lower = {**options, "preprocessing": int(options.get("preprocessing", 0) * LOWER_PREPROCESSING)}
        bound = plan_variant(*args, calibration=self.lower_bound_calibration(), **lower)
        if not bound.fits:
            return bound
        if self.upper_bound_first and self.cached(*setting) is None:
            upper = plan_variant(*args, calibration=self.upper_bound_calibration(), **options)
            if upper.fits:
                return upper
        return plan_variant(*args, calibration=self.calibration(*setting), **options)

    def cached(self, mode: str, precision: str, checkpointing: bool = False, channels_last: bool = False):
        """The setting's calibration if it is known already (cached), else ``None``; never measures."""
        from medseg_mem.memory.calibration import cached_calibration

        setting = (mode, precision, bool(checkpointing and mode == "training"), bool(channels_last))
        if setting not in self._calibrations:
            found = cached_calibration(self.calibration_path, self.device, False, None, *setting)
            if found.key == "uncalibrated":
                return None
            self._calibrations[setting] = found
        return self._calibrations[setting]

    def lower_bound_calibration(self):
        """A calibration under every real one: the smallest multiplier, no offset, and (CPU) this process's size
        now."""
        from medseg_mem.memory.calibration import Calibration

        return Calibration(LOWEST_MULTIPLIER, 0, "lower bound (uncalibrated)", (), self._process())

    def upper_bound_calibration(self):
        """A calibration over every real one: the largest multiplier, a generous offset and process."""
        from medseg_mem.memory.calibration import Calibration

        process = 0 if self.device.startswith("cuda") else max(UPPER_PROCESS, self._process() + UPPER_OFFSET)
        return Calibration(HIGHEST_MULTIPLIER, UPPER_OFFSET, "upper bound (uncalibrated)", (), process)


def calibrated(plan) -> bool:
    """Whether ``plan`` was made with a measured calibration (not a bound, not the raw count)."""
    return not plan.calibration.startswith(("lower bound", "upper bound", "uncalibrated"))


def lever_line(levers: Dict[str, int], budget: Budget, at_least: bool = False) -> str:
    """``--precision bf16: 3.2 GiB (fits), --checkpointing: 9.1 GiB`` for ``{lever: planned bytes}``; with
    ``at_least`` (the figures are lower bounds) ``--precision bf16: at least 3.2 GiB`` and no verdict."""
    if not levers:
        return "no lever left to pull: give more memory"
    if at_least:
        return "; ".join(f"{name}: at least {format_bytes(need)}" for name, need in levers.items())
    parts = [f"{name}: {format_bytes(need)}{' (fits)' if need <= budget.bytes else ''}"
             for name, need in levers.items()]  # fmt: skip
    fitting = any(need <= budget.bytes for need in levers.values())
    return "; ".join(parts) + ("" if fitting else " (none fits alone: combine them)")


def is_bound(plan) -> bool:
    """Whether ``plan``'s figure is the lower bound (over the budget without calibrating)."""
    return plan.calibration.startswith("lower bound")


def lever_calibration(check: MemoryCheck, plan, mode: str):
    """``(calibration, at_least)`` to plan the levers of ``plan`` with, measuring nothing: the plan's own, else
    (a lower-bound plan) the cached one for its setting, else the lower bound (``at_least``: its figures are
    bounds)."""
    setting = (mode, plan.precision, plan.checkpointing, plan.channels_last)
    if not is_bound(plan):
        return check.calibration(*setting), False
    cached = check.cached(*setting)
    return (cached, False) if cached is not None else (check.lower_bound_calibration(), True)
