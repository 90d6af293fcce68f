"""``prepare --add``: add new or corrected cases of the same task to a prepared dataset, without preparing the rest.

A case is *new* when its id is not in the prepared dataset, *corrected* when its id is there but its source files
changed since it was prepared (a SHA-256 of them is recorded per case, ``source_digest``). Both are prepared with
the dataset's recorded settings (reader, orientation, spacing rule and spacing, cropping, and the CT intensity
statistics: nothing is surveyed again), so every case stays on one footing. The split stays stable: existing cases
keep their split (a corrected one too), new cases go to ``split`` (train unless asked otherwise). Cases the task
no longer lists are kept. Cases prepared before digests were recorded are kept as they are.

The new folder is written beside the old one (the unchanged cases hard-linked, or copied where links cannot be
made), then renamed into place, under prepare's output lock: a failure leaves the prepared dataset as it was.

Example:
    >>> summary = add_cases(Path("Task04_Hippocampus"), Path("prep"))  # doctest: +SKIP
    >>> print(summary.line())  # doctest: +SKIP
    added 5 new and 1 corrected case(s) of Hippocampus to prep: split 161/52/52 (train/val/test), 2.1 s
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from medseg_mem.core.errors import DatasetError, MedsegError, look_up_option
from medseg_mem.core.files.atomic import publish_folder, remove_path, staging_folder
from medseg_mem.core.files.output_lock import output_lock
from medseg_mem.data import msd, prepared, splits, staging as leftovers, transforms
from medseg_mem.data.prepare import prepare_case, source_digest

#: The recorded preprocessing settings an ``--add`` may name, and how the user names them.
POLICY_OPTIONS = {"reader": "--reader", "spacing": "--spacing", "crop_foreground": "--crop-foreground"}

Warn = Callable[[str], None]


@dataclass(frozen=True)
class AddSummary:
    """What :func:`add_cases` changed (printed by the CLI as one line)."""

    out_dir: Path
    name: str
    added: Tuple[str, ...]
    corrected: Tuple[str, ...]
    split_sizes: Tuple[int, int, int]
    seconds: float

    def line(self) -> str:
        """One human-readable summary line."""
        return (f"added {len(self.added)} new and {len(self.corrected)} corrected case(s) of {self.name} to "
                f"{self.out_dir}: split {'/'.join(map(str, self.split_sizes))} (train/val/test), "
                f"{self.seconds:.1f} s")  # fmt: skip


def add_cases(task_dir: Optional[Path], out_dir: Path, split: str = "train", policy: Optional[Dict] = None,
              progress: bool = True, warn: Optional[Warn] = None) -> AddSummary:  # fmt: skip
    """Add the new and corrected cases of ``task_dir`` to the prepared dataset ``out_dir`` (module docstring).

    Args:
        task_dir: the task folder (MSD or nnU-Net v2); ``None``: the source folder the dataset records.
        out_dir: an existing prepared dataset (``medseg-mem prepare``'s output).
        split: where new cases go: ``"train"``, ``"val"`` or ``"test"``.
        policy: preprocessing options the user gave (``reader``, ``spacing``, ``crop_foreground``); each must be
            what the dataset was prepared with.
        progress: show a progress bar on stderr.
        warn: receives one line per notice; default: stderr.

    Returns:
        an :class:`AddSummary` (nothing added when no case is new or changed).

    Raises:
        MedsegError: ``out_dir`` is no prepared dataset; the task's channels or classes differ from the dataset's,
            or an option of ``policy`` differs from its recorded setting (both values named); another prepare
            holds ``out_dir``.
        DatasetError: listing every problem of the new cases; the prepared dataset is then unchanged.
    """
    start = time.perf_counter()
    look_up_option(split, prepared.SPLITS, "--add-split")
    out_dir = Path(out_dir)
    with output_lock(out_dir, "--out", "prepare"):
        dataset = _open(out_dir)
        task = msd.read_task(Path(task_dir) if task_dir is not None else Path(dataset.manifest["source"]))
        check_same_task(dataset, task, policy or {})
        new, changed = _changes(dataset, task)
        for line in _unrecorded_notice(dataset, task):
            (warn or print)(line)
        if new or changed:
            _write(dataset, task, (new, changed, split), progress)
    sizes = tuple(len(prepared.PreparedDataset.open(out_dir).ids(name)) for name in prepared.SPLITS)
    return AddSummary(out_dir, task.name, tuple(c.case_id for c in new), tuple(c.case_id for c in changed), sizes,
                      time.perf_counter() - start)  # fmt: skip


def _open(out_dir: Path) -> prepared.PreparedDataset:
    """The prepared dataset ``--add`` extends; its absence is one line saying to prepare it first."""
    if not (out_dir / "manifest.json").is_file():
        raise MedsegError(f"--out {out_dir}: holds no prepared dataset (no manifest.json) to --add to; run "
                          f"`medseg-mem prepare TASK --out {out_dir}` first, without --add")  # fmt: skip
    return prepared.PreparedDataset.open(out_dir)


def check_same_task(dataset: prepared.PreparedDataset, task: msd.MSDTask, policy: Dict) -> None:
    """Refuse a task whose channels or classes differ from the prepared dataset's, and a preprocessing option
    that differs from its recorded setting (one line each, naming both values).

    Raises:
        MedsegError: naming ``--add``, what differs, both values and the fix.
    """
    where = f"--add: {task.root}"
    if len(task.modalities) != dataset.in_channels or list(task.modalities) != dataset.modalities:
        raise MedsegError(f"{where} has channels {list(task.modalities)} but {dataset.root} was prepared with "
                          f"{dataset.modalities}; add cases of the same task, or prepare a new dataset")
    if list(task.class_names) != dataset.class_names:
        raise MedsegError(f"{where} has classes {list(task.class_names)} but {dataset.root} was prepared with "
                          f"{dataset.class_names}; add cases of the same task, or prepare a new dataset")
    recorded = dataset.manifest["preprocessing"]
    asked = transforms.make_settings(task.modalities, policy.get("reader", recorded["reader"]),
                                     policy.get("spacing"), policy.get("crop_foreground", False))  # fmt: skip
    for key, option in POLICY_OPTIONS.items():
        if key in policy and _policy_value(asked, key) != _policy_value(recorded, key):
            raise MedsegError(f"{option} {_shown(policy[key])}: {dataset.root} was prepared with "
                              f"{_policy_value(recorded, key)}; --add prepares new cases as the dataset was: drop "
                              f"{option}, or prepare a new dataset")  # fmt: skip


def _policy_value(settings: Dict, key: str):
    if key != "spacing":
        return settings[key]
    rule = settings["spacing_rule"]
    return rule if rule != "fixed" else ",".join(f"{s:g}" for s in settings["spacing"])


def _shown(value) -> str:
    return ",".join(f"{s:g}" for s in value) if isinstance(value, tuple) else str(value)


def _changes(dataset: prepared.PreparedDataset, task: msd.MSDTask):
    """``(new, corrected)`` cases of ``task``: ids the dataset lacks, and ids whose source files changed."""
    records = {record["id"]: record for record in dataset.manifest["cases"]}
    new = [case for case in task.cases if case.case_id not in records]
    changed = [case for case in task.cases if case.case_id in records and "source_digest" in records[case.case_id]
               and records[case.case_id]["source_digest"] != source_digest(case)]  # fmt: skip
    return new, changed


def _unrecorded_notice(dataset: prepared.PreparedDataset, task: msd.MSDTask) -> List[str]:
    listed = {case.case_id for case in task.cases}
    old = [c["id"] for c in dataset.manifest["cases"] if "source_digest" not in c and c["id"] in listed]
    if not old:
        return []
    return [f"note: {len(old)} case(s) of {dataset.root} were prepared before source digests were recorded; they are "
            "kept as they are (a corrected one among them is not noticed: prepare the dataset again to track them)"]


def _write(dataset: prepared.PreparedDataset, task: msd.MSDTask, changes, progress: bool) -> None:
    """Write the extended dataset into a locked staging folder and publish it over ``dataset.root``."""
    new, changed, split = changes
    settings = dataset.manifest["preprocessing"]
    pipeline = transforms.build_preprocessing(settings, with_label=True)
    staging = staging_folder(dataset.root)
    lock = leftovers.hold(staging)
    try:
        replaced = {case.case_id for case in changed}
        _link_unchanged(dataset.root, staging, replaced)
        records, problems = {}, []
        for case in _bar(new + changed, progress):
            record, found = prepare_case(pipeline, settings, case, task, staging, ([], {}))
            problems += found
            if record is not None:
                records[case.case_id] = record
        if problems:
            raise DatasetError(problems, where=str(task.root))
        prepared.write_json(staging / "manifest.json", _manifest(dataset.manifest, records))
        prepared.write_json(staging / splits.SPLITS_NAME, splits.splits_content(
            _split(dataset.split, [case.case_id for case in new], split)))  # fmt: skip
        publish_folder(staging, dataset.root)
    except BaseException:
        remove_path(staging)
        raise
    finally:
        leftovers.release(lock)


def _bar(items, progress: bool):
    import sys

    from tqdm import tqdm

    return tqdm(items, desc="prepare --add", unit="case", file=sys.stderr, disable=not progress, dynamic_ncols=True)


def _link_unchanged(root: Path, staging: Path, replaced) -> None:
    """Hard-link (else copy) every file of ``root`` into ``staging`` except the cases in ``replaced``, the manifest
    and the split, which are written anew."""
    skip = {"manifest.json", splits.SPLITS_NAME, splits.LEGACY_NAME}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] in skip or (rel.parts[0] == "cases" and len(rel.parts) > 1 and rel.parts[1] in replaced):
            continue
        target = staging / rel
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


def _manifest(manifest: Dict, records: Dict[str, Dict]) -> Dict:
    """The manifest with corrected cases' records replaced in place and new ones appended."""
    kept = [records.pop(case["id"], case) for case in manifest["cases"]]
    return {**manifest, "cases": kept + list(records.values())}


def _split(old: Dict[str, List[str]], new_ids: List[str], split: str) -> Dict[str, List[str]]:
    """The old split with ``new_ids`` added to ``split``; every existing case keeps its split."""
    return {name: list(old[name]) + (new_ids if name == split else []) for name in prepared.SPLITS}
