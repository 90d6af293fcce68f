"""``predict``'s memory guard: before the networks are loaded, the plan of the run's inference on the largest
input scan (the grid its header declares, resampled as the run does: :func:`scans_to_plan`), at the prediction's
settings, against ``--budget`` (default: the free memory less 10 %). In memory the plan is the larger of the
inference and loading and preprocessing the most demanding scan whole (:mod:`~medseg_mem.memory.preprocessing`,
from each header's types, file and axes).

A plan over the budget stops with one line: the run's variant, the planned whole-process peak, the budget and the
levers with their planned figures (``--precision bf16``, ``--sw-batch-size 1``, ``--overlap 0``, no ``--tta``,
``--out-of-core always`` for an in-memory plan of a run that can stream).
``--no-memory-check`` predicts anyway. A plan that fits even at the planner's upper bound (twice the traced
count, a generous first-call offset and process) needs no calibration, so a first ``predict`` on a machine is not
delayed by one unless the answer depends on it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional, Sequence, Tuple

from medseg_mem.core.config import InferenceConfig
from medseg_mem.core.errors import MedsegError
from medseg_mem.memory.check import MemoryCheck, MemoryGuardError, lever_calibration, lever_line, resolve_budget
from medseg_mem.memory.check import is_bound  # noqa: I001 - one line each: the guards share the rest
from medseg_mem.core.units import format_bytes


def check_memory(trained, scans: Sequence, device: str, inference: InferenceConfig, budget_bytes: Optional[int],
                 echo: Callable[[str], None], refuse: bool = True, out_of_core: str = "never"):  # fmt: skip
    """The plan of ``trained``'s inference on the largest of ``scans`` (``None`` when no header can be read);
    refuse it when it does not fit.

    ``out_of_core`` (``predict --out-of-core``): ``never`` plans the in-memory path, ``always`` the out-of-core one
    (:mod:`~medseg_mem.predict.streamed`), ``auto`` the in-memory one and, when it does not fit, the out-of-core one
    (``auto`` and ``always`` only where the run can stream). The plan's ``out_of_core`` says which path to take.

    Raises:
        MemoryGuardError: one line with the figures and the levers (unless ``refuse`` is off: said on ``echo``).
    """
    found = scans_to_plan(trained, scan_layouts(scans))
    if found is None:
        return None
    scan, shape, whole = found
    check = MemoryCheck(device, resolve_budget(budget_bytes, device), echo, upper_bound_first=True)
    plan = planned_path(check, trained, shape, inference, out_of_core == "always", preprocessing=whole)
    if not plan.fits and out_of_core == "auto":
        streamed = planned_path(check, trained, shape, inference, True)
        if streamed.fits:
            echo(f"out of core: the in-memory plan ({format_bytes(plan.process_bytes)}) is over the budget "
                 f"{check.budget.describe()}; reading, segmenting and writing {scan} by chunks plans "
                 f"{format_bytes(streamed.process_bytes)}")  # fmt: skip
            return streamed
    if plan.fits:
        return plan
    line = refusal(check, trained, (scan, shape), inference, plan, whole)
    if refuse:
        raise MemoryGuardError(line)
    echo(f"warning: {line.replace('; or add --no-memory-check to predict anyway', '')}; predicting anyway "
         "(--no-memory-check)")  # fmt: skip
    return plan


def planned_path(check: MemoryCheck, trained, shape, inference: InferenceConfig, out_of_core: bool,
                 preprocessing: int = 0, **options):  # fmt: skip
    """The plan of ``trained``'s inference on ``shape`` (:func:`scans_to_plan`) in memory (the image spilled to
    disk; loading and preprocessing the scan whole holds ``preprocessing`` bytes) or out of core; a run that
    resampled its scans makes class probabilities to interpolate back."""
    from medseg_mem.predict.restore import resamples

    return check.inference(trained.variant, shape, trained.num_classes, trained.model, inference, input_on_disk=True,
                           out_of_core=out_of_core, preprocessing=preprocessing,
                           probabilities=resamples(trained.preprocessing), **options)  # fmt: skip


def scan_layouts(scans: Sequence) -> list:
    """``(scan, layout)`` (:func:`~medseg_mem.data.headers.scan_layout`) of each scan whose header can be read and
    declares no more than the RAM holds (``predict`` reports the others by name and goes on)."""
    from medseg_mem.data.headers import header_problems, scan_layout

    layouts = [(scan, scan_layout(scan)) for scan in scans if not header_problems(scan, str(scan))]
    return [(scan, layout) for scan, layout in layouts if layout is not None]


def scans_to_plan(trained, layouts: Sequence) -> Optional[Tuple[object, Tuple[int, ...], int]]:
    """``(scan, shape, preprocessing)`` for planning ``trained``'s prediction of the scans of ``layouts``
    (:func:`scan_layouts`): the scan whose image has the most voxels once preprocessed, that image's
    ``(C, X, Y, Z)`` (RAS order, resampled as the run does:
    :func:`~medseg_mem.memory.preprocessing.preprocessed_shape`), and the most any scan's whole-scan preprocessing
    holds (:func:`~medseg_mem.memory.preprocessing.preprocessing_bytes`; for a resampling run also mapping its
    probabilities back, :func:`~medseg_mem.memory.preprocessing.restore_bytes`); ``None`` without a scan."""
    from medseg_mem.memory.preprocessing import preprocessed_shape, preprocessing_bytes, restore_bytes

    settings, classes = trained.preprocessing, trained.num_classes
    if not layouts:
        return None
    shapes = [(scan, preprocessed_shape(layout, settings)) for scan, layout in layouts]
    scan, shape = max(shapes, key=lambda item: math.prod(item[1]))
    whole = max(max(preprocessing_bytes(layout, settings), restore_bytes(layout, settings, classes))
                for _, layout in layouts)  # fmt: skip
    return scan, shape, whole


def whole_scan_bytes(trained, scans: Sequence) -> int:
    """What loading and preprocessing the most demanding of ``scans`` whole holds in memory (:func:`scans_to_plan`;
    0 when no header can be read)."""
    found = scans_to_plan(trained, scan_layouts(scans))
    return found[2] if found else 0


def refusal(check: MemoryCheck, trained, largest, inference: InferenceConfig, plan, preprocessing: int = 0) -> str:
    """The one line for a prediction whose plan is over the budget (``largest``: the ``(scan, shape)`` planned;
    ``preprocessing``: :func:`whole_scan_bytes`), with each lever's planned figure."""
    from medseg_mem.predict.streamed import streamable
    from medseg_mem.variants import get_variant

    scan, shape = largest
    options = {"--precision bf16": dict(precision="bf16"), "--sw-batch-size 1": dict(sw_batch_size=1),
               "--overlap 0": dict(overlap=0.0), "without --tta": dict(tta=False)}  # fmt: skip
    calibration, at_least = lever_calibration(check, plan, "inference")
    if is_bound(plan) and not at_least:  # a cached calibration: the figure itself, not its bound
        plan = planned_path(check, trained, shape, inference, plan.out_of_core, preprocessing, calibration=calibration)
    levers = {}
    for lever, change in options.items():
        changed = dataclasses.replace(inference, **change)
        if changed != inference:
            levers[lever] = planned_path(check, trained, shape, changed, plan.out_of_core, preprocessing,
                                         calibration=calibration).process_bytes  # fmt: skip
    if not plan.out_of_core and streamable(get_variant(trained.variant), inference):
        levers["--out-of-core always"] = planned_path(check, trained, shape, inference, True,
                                                      calibration=calibration).process_bytes  # fmt: skip
    size = "x".join(str(s) for s in shape)
    verb = "needs at least" if at_least else "plans"
    return (f"{scan}: {trained.variant} ({inference.describe()}) {verb} {format_bytes(plan.process_bytes)} for "
            f"the whole process on this {size} scan, the largest{_whole_scan_note(plan)}, over the budget "
            f"{check.budget.describe()}; {lever_line(levers, check.budget, at_least)}; or add --no-memory-check to "
            "predict anyway")  # fmt: skip


def _whole_scan_note(plan) -> str:
    """`` (loading and preprocessing it whole)`` when that phase, not the inference, is the plan's peak."""
    return " (loading and preprocessing it whole)" if plan.stage == "preprocessing" else ""


def largest_scan_shape(scans: Sequence) -> Tuple[int, ...]:
    """``(C, X, Y, Z)`` of the scan with the most voxels, from the NIfTI headers (no voxel is read).

    Raises:
        MedsegError: a header cannot be read (``--variant auto`` plans from them).
    """
    from medseg_mem.data.headers import header_problems

    for scan in scans:
        if len(_header(scan)) not in (3, 4):
            raise MedsegError(f"{scan}: cannot read a 3D or 4D NIfTI header from it; --variant auto plans from it")
    found = largest_scan(scans)
    if found is None:  # every header declares more than the RAM holds
        raise MedsegError(f"{header_problems(scans[0], str(scans[0]))[0]}; --variant auto plans from it")
    return found[1]


def largest_scan(scans: Sequence) -> Optional[Tuple[object, Tuple[int, ...]]]:
    """``(scan, (C, X, Y, Z))`` of the scan with the most voxels by its NIfTI header; scans whose header cannot be
    read or declares more than the RAM holds are left out (``predict`` reports each by name and goes on with the
    others); ``None`` when none is left."""
    from medseg_mem.data.headers import header_problems

    found = []
    for scan in scans:
        dims = _header(scan)
        if len(dims) in (3, 4) and not header_problems(scan, str(scan)):
            found.append((scan, (dims[3] if len(dims) > 3 else 1, *dims[:3])))
    return max(found, key=lambda item: item[1][0] * item[1][1] * item[1][2] * item[1][3]) if found else None


def _header(scan) -> Tuple[int, ...]:
    """The shape a scan's header declares (``()`` when it cannot be read)."""
    from medseg_mem.data.headers import header_shape

    return tuple(header_shape(scan))
