"""``run``'s memory guard: before any training, the plan of every variant's training step (its largest stage) and
of its evaluation, at the run's real settings, against ``--budget`` (default: the free memory less 10 %).

A plan over the budget stops the run with one line: the variant, the stage, the planned whole-process peak, the
budget, and the levers with their planned figures (``--precision bf16``, ``--checkpointing``, a smaller
``--batch-size`` or ``--slab-size``, ``--variant patch``). ``--no-memory-check`` runs anyway.

Absurd settings are answered before torch is imported (:func:`check_floor`, well under a second): a training step
holds at least its input batch and a few first-level activations (:mod:`medseg_mem.memory.bound`). The rest goes
through :class:`~medseg_mem.memory.check.MemoryCheck` (lower bound, then the machine's calibration, measured
once and cached).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

from medseg_mem.core.config import ModelConfig, RunRequest, TrainConfig
from medseg_mem.memory.check import (
    Budget,
    MemoryCheck,
    MemoryGuardError,
    is_bound,
    lever_calibration,
    lever_line,
    resolve_budget,
)
from medseg_mem.core.units import format_bytes

NO_CHECK = "or add --no-memory-check to run anyway"


@dataclass(frozen=True)
class Need:
    """What one variant's run needs: its training plan (largest stage), its evaluation plan, and the larger of
    the two as the whole process holds it (a CPU's ``nproc`` ranks share its RAM)."""

    training: object
    evaluation: object
    bytes: int
    share: int = 1

    @property
    def fits(self) -> bool:
        return self.bytes <= self.training.budget_bytes

    def worst(self) -> str:
        """What needs the most, e.g. ``training (stage stage2)`` or ``the evaluation``."""
        if self.share * self.training.process_bytes >= self.evaluation.process_bytes:
            per_rank = f", {self.share} processes" if self.share > 1 else ""
            return f"training (stage {self.training.stage}{per_rank})"
        return "the evaluation"


def memory_check(device: str, budget_bytes: Optional[int], echo: Callable[[str], None]) -> MemoryCheck:
    """The run's :class:`MemoryCheck`: its budget, calibrations measured with the training step when missing."""
    from medseg_mem.training.calibration_step import training_setup

    return MemoryCheck(device, resolve_budget(budget_bytes, device), echo, training_setup=training_setup)


def need(check: MemoryCheck, name: str, dataset, model: ModelConfig, train: TrainConfig, inference,
         nproc: int = 1, calibration: Optional[object] = None, earlier_networks: int = 0) -> Need:  # fmt: skip
    """The :class:`Need` of variant ``name`` on ``dataset``'s largest case (``calibration``: plan with it;
    ``earlier_networks``: networks the run trains before this variant, in the same process)."""
    shape, classes, cases = dataset.largest_image_shape(), dataset.num_classes, len(dataset.ids("train"))
    training = check.training(name, shape, classes, model, train, nproc, cases, calibration, earlier_networks)
    evaluation = check.inference(name, shape, classes, model, inference, calibration=calibration)
    share = 1 if check.device.startswith("cuda") else nproc
    return Need(training, evaluation, max(share * training.process_bytes, evaluation.process_bytes), share)


def guard(check: MemoryCheck, jobs, dataset, request: RunRequest, nproc: int, echo: Callable,
          refuse: bool = True) -> Dict[str, Need]:  # fmt: skip
    """Plan every job ``(run id, variant, train, model)`` and say each need; stop at the first that does not fit
    (with ``refuse`` off, ``--no-memory-check``: say so and go on).

    Raises:
        MemoryGuardError: one line with the variant, the stage, the figures and the levers.
    """
    needs, earlier = {}, 0
    for run_id, name, train, model in jobs:
        inference = request.evaluation(train)
        found = need(check, name, dataset, model, train, inference, nproc, earlier_networks=earlier)
        earlier += networks(name, train)
        if not found.fits and refuse:
            raise MemoryGuardError(refusal(check, name, found, dataset, model, train, request, nproc))
        over = "" if found.fits else " (over it: --no-memory-check runs it anyway)"
        echo(f"[{name}] planned peak memory of the process: training {format_bytes(found.training.process_bytes)}"
             f" (stage {found.training.stage}), evaluation {format_bytes(found.evaluation.process_bytes)}; "
             f"budget {check.budget.describe()}{over}")  # fmt: skip
        needs[run_id] = found
    return needs


def networks(name: str, train: TrainConfig) -> int:
    """Networks a run of variant ``name`` trains: its stages, and the fold models of the cascade's stage 1 with
    ``--stage2-guidance predicted``."""
    from medseg_mem.variants import get_variant

    stages = get_variant(name).stages()
    folds = train.guidance_folds if train.stage2_guidance == "predicted" and any(s.guided for s in stages) else 0
    return len(stages) + folds


def refusal(check: MemoryCheck, name: str, found: Need, dataset, model, train, request, nproc: int) -> str:
    """The guard's one line: what does not fit, by how much, and each lever's planned figure (lower bounds, said
    so, where the answer needed no calibration and none is cached)."""
    calibration, at_least = lever_calibration(check, found.training, "training")
    if is_bound(found.training) and not at_least:  # a cached calibration: the figure itself, not its bound
        found = need(check, name, dataset, model, train, request.evaluation(train), nproc, calibration)
    levers = lever_needs(check, name, dataset, model, train, request, nproc, calibration)
    verb = "needs at least" if at_least else "plans"
    return (f"{name}: {found.worst()} {verb} {format_bytes(found.bytes)} for the whole process, over the budget "
            f"{check.budget.describe()}; {lever_line(levers, check.budget, at_least)}; {NO_CHECK}")  # fmt: skip


def lever_needs(check, name, dataset, model, train, request, nproc, calibration) -> Dict[str, int]:
    """``{lever: planned need}`` for each setting that could lower the need of ``name`` (with ``calibration``)."""
    options = {}
    if train.precision == "fp32":
        options["--precision bf16"] = (model, dataclasses.replace(train, precision="bf16"), name)
    if not train.checkpointing:
        options["--checkpointing"] = (model, dataclasses.replace(train, checkpointing=True), name)
    if train.batch_size > 1:
        options["--batch-size 1"] = (model, dataclasses.replace(train, batch_size=1), name)
    if name != "full" and model.slab_size > 4:
        slab = 16 if model.slab_size > 16 else model.slab_size // 2
        options[f"--slab-size {slab}"] = (dataclasses.replace(model, slab_size=slab), train, name)
    if name != "patch":
        options["--variant patch"] = (model, train, "patch")
    return {lever: need(check, variant, dataset, lever_model, lever_train, request.evaluation(lever_train), nproc,
                        calibration).bytes
            for lever, (lever_model, lever_train, variant) in options.items()}  # fmt: skip


def check_floor(request: RunRequest, variants: List[str], nproc: int = 1) -> None:
    """Refuse, before torch is imported, a run whose training step cannot fit: its lower bound
    (:mod:`~medseg_mem.memory.bound`) already exceeds the budget. Skipped when the budget is the free memory of a
    GPU (reading it needs torch) and for ``--resume`` (the run's settings are in its record).

    Raises:
        MemoryGuardError: one line naming the variant, the bound, the budget and the levers' bounds.
    """
    from medseg_mem.data.prepared import PreparedDataset
    from medseg_mem.core.errors import MedsegError
    from medseg_mem.runner.settings import resolve_settings

    budget = floor_budget(request.budget_bytes, request.changes.train.device or "auto")
    if budget is None or request.resume:
        return
    try:
        dataset = PreparedDataset.open(request.data_dir)
    except MedsegError:
        return  # said by the run itself, in its words (and, under torchrun, by each rank)
    model, train = resolve_settings(request, dataset)
    shape = dataset.largest_image_shape()
    for name in variants:
        need = floor_need(name, shape, model, train, nproc)
        if need > budget.bytes:
            raise MemoryGuardError(floor_refusal(name, shape, model, train, nproc, need, budget))


def floor_need(name: str, shape, model: ModelConfig, train: TrainConfig, nproc: int = 1) -> int:
    """The lower bound of the whole process's peak while ``name`` trains (``nproc`` ranks on one machine)."""
    from medseg_mem.memory.bound import process_now, training_floor

    step = training_floor(name, shape, train.batch_size, model.slab_size, model.channels[0], train.precision)
    return nproc * (process_now() + step)


def floor_refusal(name, shape, model, train, nproc, need, budget: Budget) -> str:
    """The one line for a run whose lower bound is over the budget, with the levers' lower bounds."""
    levers = {}
    if train.batch_size > 1:
        levers["--batch-size 1"] = floor_need(name, shape, model, dataclasses.replace(train, batch_size=1), nproc)
    if name != "full" and model.slab_size > 16:
        levers["--slab-size 16"] = floor_need(name, shape, dataclasses.replace(model, slab_size=16), train, nproc)
    if train.precision == "fp32":
        levers["--precision bf16"] = floor_need(name, shape, model, dataclasses.replace(train, precision="bf16"),
                                                nproc)  # fmt: skip
    bounds = ", ".join(f"{lever}: at least {format_bytes(value)}" for lever, value in levers.items())
    return (f"{name}: training needs at least {format_bytes(need)} for the whole process (its input batch and "
            f"first-level activations alone), over the budget {budget.describe()}; "
            f"{bounds or 'no lever lowers that bound'}; {NO_CHECK}")  # fmt: skip


def floor_budget(budget_bytes: Optional[int], device: str) -> Optional[Budget]:
    """The budget :func:`check_floor` compares with, torch-free: ``--budget``, or the available RAM where the run
    is on the CPU (``--device cpu``, or ``auto`` on a machine without an NVIDIA driver); ``None`` otherwise."""
    if budget_bytes:
        return Budget(int(budget_bytes), "--budget")
    if device == "cuda" or (device == "auto" and Path("/dev/nvidiactl").exists()):
        return None
    from medseg_mem.memory.budget import default_budget

    return Budget(*default_budget("cpu"))
