"""``medseg-mem suggest``: which unlabelled scans to annotate next, by how unsure a trained run is of each.

Each scan is preprocessed and segmented as ``predict`` does (:class:`~medseg_mem.predict.segment.Segmenter`: the
run's pipeline, networks and label maps mapped back onto the scan's grid), scored by
:func:`~medseg_mem.predict.uncertainty.score_scan` (``entropy``, ``mirror`` or, for a cascade, ``stages``), and
ranked most uncertain first. With an output folder, ``ranking.csv`` (``rank, case, score, scan, label``: every scan
ranked, written atomically) and the label maps of the ``count`` first (``<case>_seg.nii.gz``, the starting
points for correction) are written under predict's output lock. A scan that cannot be read is reported and left
out of the ranking. Memory: the run's plan is checked as ``predict`` checks it; the class probabilities of one
scan (K float32 volumes) are held on the CPU while it is scored.

Example:
    >>> ranked = rank_scans(Path("runs/<id>"), [Path("unlabelled/")], count=5, out_dir=Path("next"))  # doctest: +SKIP
    >>> [(r.rank, r.case, round(r.score, 3)) for r in ranked[:2]]  # doctest: +SKIP
    [(1, 'hippocampus_017', 0.412), (2, 'hippocampus_203', 0.398)]
"""

from __future__ import annotations

import csv
import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np

from medseg_mem.core.config import InferenceConfig
from medseg_mem.core.device import resolve_device
from medseg_mem.core.errors import MedsegError
from medseg_mem.core.files.atomic import write_text_atomic
from medseg_mem.core.files.output_lock import output_lock
from medseg_mem.core.files.writable import check_output_folder
from medseg_mem.predict.files import collect_inputs, output_path, plan_outputs, scan_name, write_label_map
from medseg_mem.predict.restore import resamples, restore_grid, restore_labels
from medseg_mem.predict.segment import Segmenter
from medseg_mem.predict.uncertainty import check_score, score_scan
from medseg_mem.variants.trained_run import open_trained_run

DEFAULT_SCORE = "entropy"
RANKING_NAME = "ranking.csv"
RANKING_COLUMNS = ("rank", "case", "score", "scan", "label")


@dataclass(frozen=True)
class Ranked:
    """One scan's place in the ranking: ``rank`` 1 is the most uncertain; ``label`` is the label map written for
    it (``None`` beyond ``count`` or without an output folder); ``labels`` the map itself (the scan's grid)."""

    case: str
    scan: Path
    score: float
    rank: int
    label: Optional[Path] = None
    labels: Optional[np.ndarray] = None


def rank_scans(checkpoint: Path, scans: Sequence[Path], count: int, score: str = DEFAULT_SCORE,
               out_dir: Optional[Path] = None, device: str = "auto", overwrite: bool = False,
               progress: bool = False, warn: Optional[Callable[[str], None]] = None,
               budget_bytes: Optional[int] = None) -> List[Ranked]:  # fmt: skip
    """Rank ``scans`` by the trained run's uncertainty, most uncertain first (module docstring).

    Args:
        checkpoint: a run folder (``medseg-work/runs/<run id>``) or any ``.pt`` in it.
        scans: NIfTI files and folders of them (unlabelled scans of the run's task).
        count: how many to suggest (>= 1): they get label maps; every scan is ranked.
        score: ``"entropy"``, ``"mirror"`` or ``"stages"`` (cascade) (:mod:`~medseg_mem.predict.uncertainty`).
        out_dir: where ``ranking.csv`` and the label maps go; ``None``: nothing is written (the label maps of the
            first ``count`` are still returned in :attr:`Ranked.labels`).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        overwrite: replace existing files in ``out_dir``.
        progress: show a progress bar on stderr.
        warn: receives a line per scan left out, and the planner's lines (default: stderr).
        budget_bytes: the memory the scoring must fit (``None``: the device's free memory less 10 %).

    Returns:
        one :class:`Ranked` per scored scan, by rank.

    Raises:
        MedsegError: ``count`` < 1, no scans, an unknown ``score`` (or ``stages`` for a one-stage run), a bad
            checkpoint, outputs that exist (without ``overwrite``), no scan that could be scored, a plan over the
            budget; one line each.
    """
    if count < 1:
        raise MedsegError(f"--count must be at least 1 (how many scans to suggest for annotation); got {count}")
    warn = warn or (lambda line: print(line, file=sys.stderr))
    found = collect_inputs([Path(p) for p in scans])
    trained = open_trained_run(Path(checkpoint))
    check_score(score, trained.variant)
    if out_dir is None:
        return _ranked(trained, found, count, score, device, (progress, warn, budget_bytes), None)
    plan_outputs(found, Path(out_dir), overwrite)  # refuses existing label maps before any work
    _check_ranking_file(Path(out_dir), overwrite)
    check_output_folder(Path(out_dir), "--out")
    with output_lock(Path(out_dir), "--out", "suggest", inside=True):
        ranked = _ranked(trained, found, count, score, device, (progress, warn, budget_bytes), Path(out_dir))
        write_text_atomic(Path(out_dir) / RANKING_NAME, ranking_text(ranked))
    return ranked


def _check_ranking_file(out_dir: Path, overwrite: bool) -> None:
    if (out_dir / RANKING_NAME).exists() and not overwrite:
        raise MedsegError(f"--out {out_dir}: holds a {RANKING_NAME} already; pass --overwrite to replace it or "
                          "choose another --out")  # fmt: skip


def _ranked(trained, scans: List[Path], count: int, score: str, device: str, options, out_dir: Optional[Path]):
    """Score every scan, rank them, and keep (and write, with ``out_dir``) the label maps of the first ``count``."""
    from tqdm.auto import tqdm

    from medseg_mem.predict.guard import check_memory

    progress, warn, budget_bytes = options
    torch_device = resolve_device(device)
    check_memory(trained, scans, torch_device.type, InferenceConfig(), budget_bytes, warn)
    segmenter = Segmenter(trained, torch_device)
    scored = []
    for scan in tqdm(scans, desc="suggest", unit="scan", file=sys.stderr, disable=not progress):
        try:
            scored.append((scan, *_score_one(segmenter, scan, score)))
        except MedsegError as error:
            warn(f"note: left out of the ranking: {error}")
    if not scored:
        raise MedsegError("INPUT: no scan could be scored (each is said above); check the scans")
    scored.sort(key=lambda item: -item[1])
    return [_entry(rank, item, count, out_dir, trained.num_classes) for rank, item in enumerate(scored, start=1)]


def _score_one(segmenter: Segmenter, scan: Path, score: str):
    """``(score, labels)``: the scan's uncertainty and its label map on the scan's own grid (uint8)."""
    data = segmenter.preprocess(scan)
    image = data["image"].as_tensor()[None].float().to(segmenter.device)
    value, probabilities = score_scan(score, segmenter, image)
    del image
    if resamples(segmenter.trained.preprocessing):
        return value, restore_grid(segmenter.pipeline, data, probabilities[0], scan)
    labels = probabilities[0].argmax(dim=0, keepdim=True).to(dtype=_label_dtype(probabilities.shape[1]))
    return value, restore_labels(segmenter.pipeline, data, labels, scan)


def _label_dtype(num_classes: int):
    import torch

    return torch.uint8 if num_classes <= 256 else torch.int16


def _entry(rank: int, item, count: int, out_dir: Optional[Path], num_classes: int) -> Ranked:
    scan, value, labels = item
    if rank > count:
        return Ranked(scan_name(scan), scan, value, rank)
    label = None
    if out_dir is not None:
        label = write_label_map(np.asarray(labels), scan, output_path(out_dir, scan), num_classes)
    return Ranked(scan_name(scan), scan, value, rank, label, np.asarray(labels))


def ranking_text(ranked: Sequence[Ranked]) -> str:
    """``ranking.csv``'s text: a header, then one row per scan by rank (score to 6 decimals)."""
    stream = io.StringIO()
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(RANKING_COLUMNS)
    for entry in ranked:
        writer.writerow([entry.rank, entry.case, f"{entry.score:.6f}", str(entry.scan),
                         "" if entry.label is None else str(entry.label)])  # fmt: skip
    return stream.getvalue()
