"""Which runs of a runs folder ``predict --variant auto|NAME`` may use: those of one dataset that fits the scans.

A run is a candidate when it finished (every stage's ``best.pt``), its networks take as many channels as the scans
have, and its dataset (name and fingerprint, :mod:`medseg_mem.data.fingerprint`) is one the results CSV holds runs
of (when the CSV records fingerprints). When runs of several datasets remain, the dataset is the one ``--dataset``
names, else the work folder's prepared dataset (what ``run`` trains by default), else the newest run's dataset.
Per variant the run is its best by validation Dice in the results CSV (else its newest). Every skipped run is
counted in one line with the reason, so a hippocampus model is never used on rods scans without a word.

Example:
    >>> found = candidates(Path("medseg-work/runs"), 1, Path("medseg-work/results.csv"))  # doctest: +SKIP
    >>> found.runs["full"][0].name, found.note  # doctest: +SKIP
    ('20240101T000000Z-full-000001', 'dataset SyntheticRods [3f9a1c0b7d2e]; skipped 1 run: 1 of another dataset ...')
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from medseg_mem.core.errors import MedsegError
from medseg_mem.core.locations import default_prepared
from medseg_mem.data.fingerprint import dataset_label, fingerprint
from medseg_mem.variants.trained_run import TrainedRun, open_trained_run

Run = Tuple[Path, TrainedRun]


@dataclass(frozen=True)
class Candidates:
    """``runs``: ``{variant: (run folder, trained run)}`` of one dataset; ``dataset``: its label; ``note``: which
    dataset and why, and what was skipped and why; ``val_dice``: ``{run id: validation Dice}`` from the CSV."""

    runs: Dict[str, Run]
    dataset: str
    note: str
    val_dice: Dict[str, float]


def run_fingerprint(folder: Path, trained: TrainedRun) -> str:
    """The run's dataset fingerprint from ``run.json`` (else its checkpoints); empty for runs that predate it."""
    try:
        recorded = json.loads((folder / "run.json").read_text(encoding="utf-8")).get("dataset_fingerprint")
    except (OSError, ValueError, AttributeError):
        recorded = None
    return str(recorded or trained.fingerprint or "")


def candidates(runs_dir: Path, channels: int, results: Path, dataset: Optional[str] = None) -> Candidates:
    """The runs of ``runs_dir`` that ``predict --variant`` may pick from (see the module docstring).

    Args:
        channels: the scans' channel count.
        results: the results CSV (its datasets and validation Dice; missing: no filter, newest per variant).
        dataset: a dataset name or fingerprint to prefer (``predict --dataset``).

    Raises:
        MedsegError: no finished run, none that fits the scans, or ``dataset`` matches none of them.
    """
    finished = finished_runs(Path(runs_dir))
    known, val_dice = results_datasets(results)
    skipped: Counter = Counter()
    kept: List[Tuple[Path, TrainedRun, str]] = []
    for folder, trained in finished:
        digest = run_fingerprint(folder, trained)
        if len(trained.modalities) != channels:
            skipped[f"{len(trained.modalities)} channel(s) where the scans have {channels}"] += 1
        elif known and digest not in known:
            skipped[f"a dataset with no runs in {results}"] += 1
        else:
            kept.append((folder, trained, digest))
    if not kept:
        raise MedsegError(f"--checkpoint {runs_dir}: none of its {len(finished)} finished run(s) fits these scans "
                          f"({_counted(skipped)}); train one on their dataset or pass --checkpoint RUN")  # fmt: skip
    key, why = chosen_dataset(kept, dataset)
    others = [run for run in kept if (run[1].dataset, run[2]) != key]
    for _, trained, digest in others:
        skipped[f"another dataset ({dataset_label(trained.dataset, digest)})"] += 1
    runs = per_variant([run for run in kept if (run[1].dataset, run[2]) == key], val_dice)
    label = dataset_label(*key)
    note = f"dataset {label} ({why})" + (f"; skipped {_counted(skipped)}" if skipped else "")
    return Candidates(runs, label, note, val_dice)


def finished_runs(runs_dir: Path) -> List[Run]:
    """Every finished run of ``runs_dir``, newest first (run ids begin with their UTC start time)."""
    found = []
    folders = sorted((p for p in runs_dir.iterdir() if (p / "run.json").is_file()), reverse=True) \
        if runs_dir.is_dir() else []  # fmt: skip
    for folder in folders:
        try:
            found.append((folder, open_trained_run(folder)))
        except MedsegError:
            continue  # unfinished or damaged: not a candidate
    if not found:
        raise MedsegError(f"--checkpoint {runs_dir}: --variant needs a folder of runs (medseg-work/runs) with at "
                          "least one finished run; train one with `medseg-mem run`")  # fmt: skip
    return found


def results_datasets(results: Path) -> Tuple[set, Dict[str, float]]:
    """The fingerprints of the results CSV's runs (empty: no CSV, or none recorded) and each run's validation
    Dice."""
    from medseg_mem.report.results import final_rows, read_results

    if not Path(results).is_file():
        return set(), {}
    try:
        rows = final_rows(read_results(Path(results)))
    except MedsegError:
        return set(), {}
    rows = rows[rows["source"] == "run"]
    known = set(rows["dataset_fingerprint"]) - {""}
    scored = rows[rows["val_dice"].notna()].groupby("run_id")["val_dice"].first()
    return known, {str(run_id): float(value) for run_id, value in scored.items()}


def chosen_dataset(kept, wanted: Optional[str]) -> Tuple[Tuple[str, str], str]:
    """``((name, fingerprint), why)`` of the dataset to predict with, among the kept runs' (newest first)."""
    keys = list(dict.fromkeys((trained.dataset, digest) for _, trained, digest in kept))
    if wanted:
        matches = [key for key in keys if wanted in key]
        if not matches:
            names = ", ".join(dataset_label(*key) for key in keys)
            raise MedsegError(f"--dataset {wanted}: no run of it fits these scans; runs that do: {names}")
        return matches[0], "--dataset"
    if len(keys) == 1:
        return keys[0], "the only one that fits the scans"
    work = _work_dataset()
    if work in keys:
        return work, f"the prepared dataset in {default_prepared()}; others: --dataset NAME"
    return keys[0], "the newest run's; others: --dataset NAME"


def per_variant(runs, val_dice: Dict[str, float]) -> Dict[str, Run]:
    """``{variant: run}``: each variant's best run by validation Dice (runs without one rank below, newest first)."""
    chosen: Dict[str, Run] = {}
    for folder, trained, _ in sorted(runs, key=lambda run: -val_dice.get(run[0].name, -1.0)):  # stable: newest first
        chosen.setdefault(trained.variant, (folder, trained))
    return chosen


def _work_dataset() -> Optional[Tuple[str, str]]:
    """``(name, fingerprint)`` of the work folder's prepared dataset, ``None`` when there is none."""
    from medseg_mem.data.prepared import PreparedDataset

    try:
        dataset = PreparedDataset.open(default_prepared())
    except MedsegError:
        return None
    return dataset.name, fingerprint(dataset)


def _counted(reasons: Counter) -> str:
    total = sum(reasons.values())
    return f"{total} run(s): " + ", ".join(f"{count} with {reason}" if "channel" in reason else f"{count} of {reason}"
                                           for reason, count in reasons.items())  # fmt: skip
