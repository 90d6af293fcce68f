"""``medseg-mem predict --variant auto``: pick the trained run to predict with from a folder of runs.

``--checkpoint`` names a runs folder (``medseg-work/runs``). Its finished runs (every stage's ``best.pt``
present) of the newest run's dataset are the candidates, the newest run per variant. Each is planned for the
largest input scan (its stored grid and channels; preprocessing that resamples or crops changes it) with the
prediction's settings; :func:`~medseg_mem.memory.choose.choose` takes the most accurate one that fits the
budget, accuracy ranked by the results CSV for that dataset (else full > cascade > patch).

Example:
    >>> run = choose_run(Path("medseg-work/runs"), [Path("scan.nii.gz")], Path("medseg-work/results.csv"),
    ...                  8 * 10**9, "cpu", InferenceConfig(), print)  # doctest: +SKIP
    --variant auto: cascade: planned 4.66 GiB fits 7.45 GiB (--budget) (full needs 9.1 GiB: over it); ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from medseg_mem.config import InferenceConfig
from medseg_mem.errors import MedsegError
from medseg_mem.memory.budget import default_budget
from medseg_mem.memory.calibration import CALIBRATION_FILE, cached_calibration
from medseg_mem.memory.choose import accuracy_order, choose
from medseg_mem.memory.planner import plan_variant
from medseg_mem.predict.trained_run import TrainedRun, open_trained_run


def choose_run(
    runs_dir: Path, scans: Sequence[Path], results: Path, budget: Optional[int], device: str,
    inference: InferenceConfig, echo: Callable[[str], None],
) -> Path:  # fmt: skip
    """The run folder ``--variant auto`` predicts with, said in one line with the reason.

    Raises:
        MedsegError: no finished run in ``runs_dir``, or no candidate fits the budget.
    """
    candidates = newest_runs(Path(runs_dir))
    budget, source = (budget, "--budget") if budget else default_budget(device)
    shape = largest_scan_shape(scans)
    needs = {name: planned(trained, shape, device, inference, echo) for name, (_, trained) in candidates.items()}
    order, why = accuracy_order(results, next(iter(candidates.values()))[1].dataset)
    choice = choose(needs, order, budget, source, why, lever=_lever(inference))
    echo(f"--variant auto: {choice.reason}")
    return candidates[choice.variant][0]


def newest_runs(runs_dir: Path) -> Dict[str, Tuple[Path, TrainedRun]]:
    """``{variant: (run folder, trained run)}``: the newest finished run per variant of the newest run's dataset."""
    finished = []
    for folder in sorted((p for p in runs_dir.iterdir() if (p / "run.json").is_file()), reverse=True) \
            if runs_dir.is_dir() else ():  # fmt: skip
        try:
            finished.append((folder, open_trained_run(folder)))
        except MedsegError:
            continue  # unfinished or damaged: not a candidate
    if not finished:
        raise MedsegError(f"--checkpoint {runs_dir}: --variant auto needs a folder of runs (medseg-work/runs) with at "
                          "least one finished run; train one with `medseg-mem run`")  # fmt: skip
    dataset = finished[0][1].dataset
    chosen: Dict[str, Tuple[Path, TrainedRun]] = {}
    for folder, trained in finished:
        if trained.dataset == dataset and trained.variant not in chosen:
            chosen[trained.variant] = (folder, trained)
    return chosen


def largest_scan_shape(scans: Sequence[Path]) -> Tuple[int, ...]:
    """``(C, X, Y, Z)`` of the scan with the most voxels, from the NIfTI headers (no voxel is read)."""
    from medseg_mem.data.headers import header_shape

    shapes = []
    for scan in scans:
        dims = header_shape(scan)
        if len(dims) < 3:
            raise MedsegError(f"{scan}: cannot read a 3D or 4D NIfTI header from it; --variant auto plans from it")
        shapes.append((dims[3] if len(dims) > 3 else 1, *dims[:3]))
    return max(shapes, key=lambda shape: shape[0] * shape[1] * shape[2] * shape[3])


def planned(trained: TrainedRun, shape, device: str, inference: InferenceConfig, echo) -> int:
    """Planned inference peak of ``trained`` on an image of ``shape``."""
    calibration = cached_calibration(CALIBRATION_FILE, trained.model.channels, device, True, echo,
                                     precision=inference.precision, channels_last=inference.channels_last)  # fmt: skip
    return plan_variant(trained.variant, shape, trained.num_classes, trained.model, calibration=calibration,
                        device=device, inference=inference, input_on_disk=True).predicted_bytes  # fmt: skip


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
