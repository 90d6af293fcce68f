"""``medseg-mem run --variant auto``: train the most accurate variant whose training step and inference fit.

Each variant's need is the whole process's planned peak (:func:`~medseg_mem.runner.guard.need`): the larger of
its training step (the run's precision, checkpointing, layout, batch size, loader workers and, for the stages that
cache, the case cache up to the training split) and its evaluation, both for the dataset's largest case, on the
run's device; :func:`~medseg_mem.memory.choose.choose` then takes the first of the accuracy order
(:func:`~medseg_mem.report.ranking.accuracy_order`) that fits. The plans go through the run's
:class:`~medseg_mem.memory.check.MemoryCheck` (lower bound first, the machine's calibration measured once).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Tuple

from medseg_mem.core.config import ModelConfig, TrainConfig
from medseg_mem.core.names import VARIANT_NAMES
from medseg_mem.core.units import format_bytes
from medseg_mem.memory.check import MemoryCheck
from medseg_mem.memory.choose import choose
from medseg_mem.report.ranking import accuracy_order
from medseg_mem.runner.guard import Need, need


def auto_variant(request, dataset, model: ModelConfig, train: TrainConfig, check: MemoryCheck, echo: Callable,
                 nproc: int = 1) -> Tuple[str, Need]:  # fmt: skip
    """The variant ``--variant auto`` trains and its need, said in one line with the reason.

    Raises:
        MedsegError: no variant fits the budget (names the smallest need and the lever that would fit it).
    """
    inference = request.evaluation(train)
    needs: Dict[str, Need] = {name: need(check, name, dataset, model, train, inference, nproc)
                              for name in VARIANT_NAMES}  # fmt: skip
    order, why = accuracy_order(request.results, dataset.name)
    lever = _lever(check, needs, dataset, model, train, request, nproc)
    budget = check.budget
    bounds = [name for name, found in needs.items() if found.training.calibration.startswith("lower bound")]
    choice = choose({name: found.bytes for name, found in needs.items()}, order, budget.bytes, budget.source, why,
                    lever, bounds)  # fmt: skip
    echo(f"--variant auto: {choice.reason}")
    return choice.variant, needs[choice.variant]


def _lever(check, needs, dataset, model, train, request, nproc) -> Callable[[str], str]:
    """For the error when nothing fits: what bf16 + checkpointing would need for the smallest variant."""

    def hint(name: str) -> str:
        if train.precision == "bf16" and train.checkpointing and request.evaluation(train).precision == "bf16":
            return "lower --batch-size, --channels or --slab-size, or give more memory"
        lean = dataclasses.replace(train, precision="bf16", checkpointing=True)
        inference = dataclasses.replace(request.evaluation(train), precision="bf16")
        calibration = None if needs[name].training.calibration.startswith("lower bound") else \
            check.calibration("training", train.precision, train.checkpointing, train.channels_last)  # fmt: skip
        found = need(check, name, dataset, model, lean, inference, nproc, calibration)
        verdict = "fits" if found.bytes <= check.budget.bytes else \
            "still does not fit; also lower --batch-size, --cache or --channels"  # fmt: skip
        at_least = " at least" if found.training.calibration.startswith("lower bound") else ""
        return (f"with --precision bf16 --checkpointing it would need{at_least} {format_bytes(found.bytes)}, which "
                f"{verdict}")

    return hint
