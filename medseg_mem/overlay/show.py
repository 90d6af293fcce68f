"""``medseg-mem show``: a trained run's test cases (or the named ones) segmented and drawn over their images.

For each case of the run's prepared dataset (``data_dir`` in its ``run.json``) the whole variant segments the
prepared image with the run's best checkpoints, as evaluation does, and
:func:`~medseg_mem.overlay.figure.draw_overlay` draws three planes through the foreground with the prediction and
the ground truth outlined and the case's Dice per class in the title: ``<run>/show/<case>.png``, or
``<out>/<case>.png``. The run folder's own ``show/`` is show's to replace; elsewhere existing files are kept
unless ``overwrite``.

Example:
    >>> summary = show_run(Path("medseg-work/runs/<run id>"), ["rods_005"])  # doctest: +SKIP
    >>> print(summary.line())  # doctest: +SKIP
    drew 1 case(s) of run <run id> (full) into medseg-work/runs/<run id>/show, 1.2 s
"""

from __future__ import annotations

import difflib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from medseg_mem.core.config import InferenceConfig
from medseg_mem.core.errors import MedsegError
from medseg_mem.core.files.writable import check_output_folder
from medseg_mem.core.locations import default_runs
from medseg_mem.data.prepared import PreparedDataset
from medseg_mem.overlay.figure import draw_overlay
from medseg_mem.variants.trained_run import TrainedRun, open_trained_run

SHOW_FOLDER = "show"


@dataclass(frozen=True)
class ShowSummary:
    """What :func:`show_run` drew: ``written`` PNGs of run ``run_dir`` (variant ``variant``) into ``out_dir``."""

    run_dir: Path
    variant: str
    written: Tuple[Path, ...]
    out_dir: Path
    seconds: float

    def line(self) -> str:
        """One human-readable summary line."""
        return (f"drew {len(self.written)} case(s) of run {self.run_dir.name} ({self.variant}) into {self.out_dir}, "
                f"{self.seconds:.1f} s")  # fmt: skip


def find_run(run: str, runs_dir: Optional[Path] = None) -> Path:
    """The run folder ``run`` names: a folder holding ``run.json``, or a run id in ``runs_dir`` (default: the work
    folder's, :func:`~medseg_mem.core.locations.default_runs`).

    Raises:
        MedsegError: neither, naming ``RUN`` and where it was looked for.
    """
    runs_dir = default_runs() if runs_dir is None else Path(runs_dir)
    for folder in (Path(run), runs_dir / str(run)):
        if (folder / "run.json").is_file():
            return folder
    if Path(run).is_dir():
        raise MedsegError(f"RUN {run}: not a run folder (no run.json); pass medseg-work/runs/<run id> or a run id")
    known = sorted(p.name for p in Path(runs_dir).glob("*/run.json")) if Path(runs_dir).is_dir() else []
    close = difflib.get_close_matches(str(run), [Path(name).parent.name for name in known], n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; list {runs_dir} for run ids (or pass --runs)"
    raise MedsegError(f"RUN {run}: no such run folder, nor a run id in {runs_dir}{hint}")


def run_dataset(run_dir: Path, trained: TrainedRun) -> PreparedDataset:
    """The prepared dataset the run trained on (``data_dir`` in ``run.json``), with the run's classes.

    Raises:
        MedsegError: ``run.json`` names no readable dataset, or one whose classes differ from the run's.
    """
    record = Path(run_dir) / "run.json"
    try:
        data_dir = json.loads(record.read_text(encoding="utf-8"))["data_dir"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise MedsegError(f"{record}: names no prepared dataset (data_dir: {error}); show needs the run's "
                          "dataset for its cases and ground truth") from error  # fmt: skip
    dataset = PreparedDataset.open(Path(data_dir))
    if tuple(dataset.class_names) != tuple(trained.class_names):
        raise MedsegError(f"{record}: its dataset {data_dir} now has the classes {', '.join(dataset.class_names)}, "
                          f"not the run's ({', '.join(trained.class_names)}); was it prepared again from another "
                          "task? Prepare the run's task again, or show another run")  # fmt: skip
    return dataset


def checked_cases(dataset: PreparedDataset, case_ids: Sequence[str]) -> List[str]:
    """``case_ids`` (all must be in the dataset), or the test split when none is given.

    Raises:
        MedsegError: an unknown case id, naming it, the dataset and the nearest id.
    """
    known = [case for split in ("train", "val", "test") for case in dataset.ids(split)]
    for case_id in case_ids:
        if case_id not in known:
            close = difflib.get_close_matches(case_id, known, n=1)
            test = ", ".join(dataset.ids("test")[:3])
            hint = f"did you mean {close[0]!r}?" if close else f"its test cases are {test} ..."
            raise MedsegError(f"CASE {case_id}: not a case of the run's dataset {dataset.root}; {hint}")
    return list(dict.fromkeys(case_ids)) or dataset.ids("test")


def show_run(run_dir: Path, case_ids: Sequence[str] = (), out_dir: Optional[Path] = None, device: str = "auto",
             overwrite: bool = False, inference: Optional[InferenceConfig] = None) -> ShowSummary:  # fmt: skip
    """Segment and draw the cases of a run (see the module docstring).

    Args:
        run_dir: the run folder (:func:`find_run`).
        case_ids: cases of its dataset (any split); none: its test split.
        out_dir: where the PNGs go (default ``<run_dir>/show``).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        overwrite: replace PNGs that exist in ``out_dir`` (always so in ``<run_dir>/show``).
        inference: slab batch, overlap, precision (default :class:`~medseg_mem.core.config.InferenceConfig`).

    Raises:
        MedsegError: an unfinished or damaged run, its dataset missing, an unknown case id, an output folder that
            cannot be written, or PNGs there that would be replaced (without ``overwrite``).
    """
    start, run_dir = time.perf_counter(), Path(run_dir)
    try:
        trained = open_trained_run(run_dir)
    except MedsegError as error:  # said of predict's --checkpoint; here the run is show's RUN
        raise MedsegError(str(error).replace("--checkpoint ", "RUN ", 1)) from error
    dataset = run_dataset(run_dir, trained)
    cases = checked_cases(dataset, case_ids)
    out = Path(out_dir) if out_dir is not None else run_dir / SHOW_FOLDER
    targets = {case: out / f"{case}.png" for case in cases}
    check_targets(targets, out, overwrite or out_dir is None)
    check_output_folder(out, "--out")
    segment = case_segmenter(trained, device, inference or InferenceConfig())
    written = [draw_case(dataset, trained, case, segment, path, run_dir.name) for case, path in targets.items()]
    return ShowSummary(run_dir, trained.variant, tuple(written), out, time.perf_counter() - start)


def check_targets(targets: Dict[str, Path], out: Path, replace: bool) -> None:
    """Refuse PNGs that exist already in ``out`` unless ``replace``."""
    existing = [path.name for path in targets.values() if path.exists()]
    if existing and not replace:
        shown = ", ".join(existing[:3]) + (", ..." if len(existing) > 3 else "")
        raise MedsegError(f"--out {out}: {len(existing)} file(s) exist already ({shown}); pass --overwrite to "
                          "replace them or choose another --out")  # fmt: skip


def case_segmenter(trained: TrainedRun, device: str, inference: InferenceConfig):
    """A function: prepared image ``(C, X, Y, Z)`` -> label map ``(X, Y, Z)`` uint8, by the whole variant."""
    import torch

    from medseg_mem.core.device import resolve_device
    from medseg_mem.variants import TrainedVariant

    torch_device = resolve_device(device)
    run = TrainedVariant.load(trained, torch_device, inference, labels_device="cpu")

    def segment(image: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.array(image, dtype=np.float32))[None].to(torch_device)
        with torch.inference_mode():
            labels = run.segment(batch)
        return labels[0, 0].numpy()

    return segment


def draw_case(dataset: PreparedDataset, trained: TrainedRun, case_id: str, segment, path: Path, run_id: str) -> Path:
    """Segment one prepared case and draw it with its ground truth and Dice per class in the title."""
    import torch

    from medseg_mem.inference.metrics import dice_per_class, dice_text

    case = dataset.load(case_id, mmap=True)
    prediction, truth = segment(case.image), np.array(case.label[0])
    dice = dice_per_class(torch.from_numpy(prediction)[None, None], torch.from_numpy(truth)[None, None],
                          trained.num_classes)[0].tolist()  # fmt: skip
    title = f"{case_id}: run {run_id} ({trained.variant})\nDice {dice_text(trained.class_names[1:], dice)}"
    spacing = np.linalg.norm(np.asarray(case.affine, dtype=np.float64)[:3, :3], axis=0)
    return draw_overlay(path, case.image, prediction, truth, trained.class_names, title=title, spacing=spacing)
