"""``medseg-mem predict --variant auto``: pick the trained run to predict with from a folder of runs.

``--checkpoint`` names a runs folder (``medseg-work/runs``). Its finished runs of one dataset that fits the scans
are the candidates (:mod:`~medseg_mem.predict.candidates`), the best run per variant. Each is planned for the
largest input scan (its stored grid and channels; preprocessing that resamples or crops changes it) with the
prediction's settings, as the whole process's peak; :func:`~medseg_mem.memory.choose.choose` takes the most
accurate one that fits the budget, accuracy ranked by the results CSV for that dataset (else full > cascade >
patch).

Example:
    >>> run = choose_run(Path("medseg-work/runs"), [Path("scan.nii.gz")], Path("medseg-work/results.csv"),
    ...                  8 * 10**9, "cpu", InferenceConfig(), print)  # doctest: +SKIP
    --variant auto: cascade: planned 4.66 GiB fits 7.45 GiB (--budget) (full needs 9.1 GiB: over it); ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional, Sequence

from medseg_mem.core.config import InferenceConfig
from medseg_mem.core.errors import MedsegError
from medseg_mem.memory.check import MemoryCheck, resolve_budget
from medseg_mem.memory.choose import choose
from medseg_mem.predict.guard import largest_scan_shape, scan_layouts, scans_to_plan
from medseg_mem.report.ranking import accuracy_order
from medseg_mem.predict.candidates import candidates
from medseg_mem.variants.trained_run import TrainedRun


def choose_run(
    runs_dir: Path, scans: Sequence[Path], results: Path, budget: Optional[int], device: str,
    inference: InferenceConfig, echo: Callable[[str], None], dataset: Optional[str] = None, out_of_core: str = "auto",
) -> Path:  # fmt: skip
    """The run folder ``--variant auto`` predicts with, said in one line with the reason.

    The candidates are each variant's best run of one dataset that fits the scans
    (:func:`~medseg_mem.predict.candidates.candidates`). Each candidate's need is its planned whole-process peak
    (:class:`~medseg_mem.memory.check.MemoryCheck`: a need whose lower bound is over the budget is known without
    calibrating), out of core where ``out_of_core`` (``predict --out-of-core``) lets a ``patch`` or ``cascade``
    run stream (:func:`planned`).

    Raises:
        MedsegError: no finished run in ``runs_dir`` that fits the scans, or no candidate fits the budget.
    """
    shape = largest_scan_shape(scans)
    found = candidates(Path(runs_dir), shape[0], results, dataset)
    check = MemoryCheck(device, resolve_budget(budget, device), echo)
    layouts = scan_layouts(scans)  # each header read once, planned with each run's preprocessing
    plans = {name: planned(check, trained, *scans_to_plan(trained, layouts)[1:], inference, out_of_core)
             for name, (_, trained) in found.runs.items()}  # fmt: skip
    needs = {name: plan.process_bytes for name, plan in plans.items()}
    bounds = [name for name, plan in plans.items() if plan.calibration.startswith("lower bound")]
    order, why = accuracy_order(results, next(iter(found.runs.values()))[1].dataset)
    choice = choose(needs, order, check.budget.bytes, check.budget.source, why, _lever(inference), bounds)
    folder = found.runs[choice.variant][0]
    echo(f"--variant auto: {choice.reason}; run {folder.name}, {found.note}")
    return folder


def named_run(runs_dir: Path, variant: str, scans: Sequence[Path], results: Path, echo: Callable[[str], None],
              dataset: Optional[str] = None) -> Path:  # fmt: skip
    """The run folder ``--variant NAME`` predicts with: that variant's best run of the dataset
    :func:`~medseg_mem.predict.candidates.candidates` picks, said in one line.

    Raises:
        MedsegError: no run fits the scans, or none of the variant among them.
    """
    found = candidates(Path(runs_dir), largest_scan_shape(scans)[0], results, dataset)
    if variant not in found.runs:
        raise MedsegError(f"--variant {variant}: {runs_dir} holds no finished {variant} run of {found.dataset} (it "
                          f"has {', '.join(found.runs)}; {found.note})")  # fmt: skip
    folder = found.runs[variant][0]
    score = found.val_dice.get(folder.name)
    how = f"best by validation Dice {100 * score:.1f} %" if score is not None else "newest (no validation Dice)"
    echo(f"--variant {variant}: run {folder.name} ({how}), {found.note}")
    return folder


def planned(check: MemoryCheck, trained: TrainedRun, shape, preprocessing: int, inference: InferenceConfig,
            out_of_core: str = "auto"):  # fmt: skip
    """The plan of predicting with ``trained`` on an image of ``shape`` (its ``process_bytes``: the need): in
    memory (loading and preprocessing the scan whole holds ``preprocessing`` bytes; both from
    :func:`~medseg_mem.predict.guard.scans_to_plan`), or out of core where
    ``predict --out-of-core`` would take that path (``always``; ``auto`` when only it fits; never for ``full``,
    whose plan stays whole-volume)."""
    from medseg_mem.predict.guard import planned_path
    from medseg_mem.predict.streamed import streamable
    from medseg_mem.variants import get_variant

    can_stream = out_of_core != "never" and streamable(get_variant(trained.variant), inference)
    plan = planned_path(check, trained, shape, inference, can_stream and out_of_core == "always", preprocessing)
    if can_stream and not plan.fits and out_of_core == "auto":
        streamed = planned_path(check, trained, shape, inference, True)
        return streamed if streamed.fits else plan
    return plan


def _lever(inference: InferenceConfig) -> Callable[[str], str]:
    def hint(name: str) -> str:
        if inference.precision == "fp32":
            return "--precision bf16 about halves the activations; or pass fewer or smaller scans"
        return "train a run with narrower --channels or a thinner --slab-size, or give more memory"

    return hint


def scans_of(inputs: Sequence[Path]) -> List[Path]:
    """The NIfTI files ``predict`` would segment (files and folders expanded)."""
    from medseg_mem.predict.files import collect_inputs

    return collect_inputs([Path(p) for p in inputs])
