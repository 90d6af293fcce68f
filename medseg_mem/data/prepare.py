"""``prepare``: turn an MSD task or nnU-Net v2 dataset folder (or the embedded default) into a prepared dataset,
atomically.

Steps: check ``dataset.json`` (and ``--splits``, against the task's cases); when the settings need dataset
statistics (CT intensities, median spacing) load and check every case once to collect them; then load, check and
transform every case into a hidden staging folder beside ``out_dir``. Only when every case passed are
``manifest.json`` and ``splits.json`` (:mod:`~medseg_mem.data.splits`) written and the staging folder renamed to
``out_dir``; otherwise it is deleted and a :class:`DatasetError` lists every problem found. The task folder is
only read.

Example:
    >>> summary = prepare(PrepareConfig(task_dir=Path("Task04_Hippocampus"), out_dir=Path("prep")))  # doctest: +SKIP
    >>> print(summary.line())  # doctest: +SKIP
    prepared 260 cases of Hippocampus into prep: 3 classes (background, Anterior, Posterior), 1 channel, ...
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np

from medseg_mem import __version__
from medseg_mem.core.errors import DatasetError, MedsegError
from medseg_mem.core.files.atomic import WriteError, publish_folder, remove_path, staging_folder
from medseg_mem.core.files.output_lock import output_lock
from medseg_mem.core.prepare_config import PrepareConfig
from medseg_mem.data import capacity, msd, notices, prepared, splits, staging as leftovers, transforms
from medseg_mem.data.survey import survey
from medseg_mem.data.synthetic import TASK_FOLDER, write_default_task


@dataclass(frozen=True)
class PrepareSummary:
    """What :func:`prepare` produced (printed by the CLI as one line)."""

    out_dir: Path
    task_dir: Path
    name: str
    n_cases: int
    class_names: Tuple[str, ...]
    in_channels: int
    min_shape: Tuple[int, ...]
    max_shape: Tuple[int, ...]
    split_sizes: Tuple[int, int, int]
    seconds: float

    def line(self) -> str:
        """One human-readable summary line."""
        shapes = _shape(self.min_shape)
        if self.max_shape != self.min_shape:
            shapes += f" to {_shape(self.max_shape)}"
        return (
            f"prepared {self.n_cases} cases of {self.name} into {self.out_dir}: "
            f"{len(self.class_names)} classes ({', '.join(self.class_names)}), {self.in_channels} channel(s), "
            f"shapes {shapes}, split {'/'.join(map(str, self.split_sizes))} (train/val/test), "
            f"{self.seconds:.1f} s"
        )


def _shape(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


def default_task_dir(out_dir: Path, synthetic: str = "rods") -> Path:
    """Where a generated task is written: beside ``out_dir``, in that task's own folder.

    Args:
        out_dir: the prepared output folder.
        synthetic: ``"rods"`` (the embedded default, ``Task00_SyntheticRods``) or ``"brats-like"``
            (the capacity task, ``Task90_BratsLike``).

    Returns:
        ``<out_dir>.parent / <task folder>``.

    Raises:
        MedsegError: for an unknown ``synthetic`` name.
    """
    folders = {"rods": TASK_FOLDER, "brats-like": capacity.TASK_FOLDER}
    if synthetic not in folders:
        raise MedsegError(f"--synthetic must be one of {', '.join(folders)}; got {synthetic!r}")
    return Path(out_dir).parent / folders[synthetic]


def _write_generated_task(task_dir: Path, config: PrepareConfig) -> None:
    """Write the generated task ``config.synthetic`` to ``task_dir`` (``--cases``/``--shape`` or its defaults)."""
    if config.synthetic == "brats-like":
        capacity.write_brats_like_task(
            task_dir,
            seed=config.seed,
            n_cases=config.cases or capacity.DEFAULT_CASES,
            shape=config.shape or capacity.DEFAULT_SHAPE,
        )
        return
    sizes = {"n_cases": config.cases, "shape": config.shape}
    write_default_task(task_dir, seed=config.seed, **{k: v for k, v in sizes.items() if v is not None})


Warn = Callable[[str], None]


def prepare(config: PrepareConfig, progress: bool = True, warn: Optional[Warn] = None) -> PrepareSummary:
    """Prepare an MSD task (``config.task_dir``) or the embedded default (``None``) into ``config.out_dir``.

    Args:
        config: the options of ``medseg-mem prepare``.
        progress: show tqdm progress bars on stderr.
        warn: receives one line per warning (too few cases to split, ``numTraining`` differing from the cases
            listed, an all-zero image, a class that resampling removed from a case or that no case of a split
            holds, partial folders of an interrupted earlier prepare that were removed); default: stderr.

    Returns:
        a :class:`PrepareSummary`.

    Raises:
        DatasetError: listing every problem of the task folder; nothing appears at ``out_dir`` then.
        MedsegError: when ``out_dir`` holds something else (without ``overwrite``), overlaps the task folder, is
            being written by another prepare, or a case resampled to ``config.spacing`` would not fit in memory.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small per-case tensor ops: extra intra-op threads only contend (30x slower seen)
    try:
        return _prepare(config, progress, warn or _to_stderr)
    finally:
        torch.set_num_threads(threads)


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _prepare(config: PrepareConfig, progress: bool, warn: Warn) -> PrepareSummary:
    start = time.perf_counter()
    out_dir = Path(config.out_dir)
    task_dir = Path(config.task_dir) if config.task_dir is not None else default_task_dir(out_dir, config.synthetic)
    _check_overlap(task_dir, out_dir)
    with output_lock(out_dir, "--out", "prepare"):  # a second prepare into the same --out stops here
        _check_occupant(task_dir, out_dir, config.overwrite)
        if config.task_dir is None:
            _write_generated_task(task_dir, config)
        _say(warn, notices.stale_notice(out_dir, leftovers.remove_stale(out_dir)))
        task = msd.read_task(task_dir)
        _say(warn, notices.count_notice(task_dir, task.num_training, len(task.cases), task.layout))
        split = _split(task, config, warn)
        settings = transforms.make_settings(task.modalities, config.reader, config.spacing, config.crop_foreground)
        if transforms.needs_survey(settings):
            settings = survey(task, settings, _bar(task.cases, "survey", progress))
        records = _write(task, settings, out_dir, (split, _split_source(config)), progress, warn)
    shapes = np.array([r["prepared_shape"] for r in records])
    return PrepareSummary(
        out_dir=out_dir,
        task_dir=task_dir,
        name=task.name,
        n_cases=len(records),
        class_names=tuple(task.class_names),
        in_channels=len(task.modalities),
        min_shape=tuple(int(v) for v in shapes.min(axis=0)),
        max_shape=tuple(int(v) for v in shapes.max(axis=0)),
        split_sizes=tuple(len(split[name]) for name in prepared.SPLITS),
        seconds=time.perf_counter() - start,
    )


def _split(task: msd.MSDTask, config: PrepareConfig, warn: Warn) -> splits.Split:
    """The user's split (``--splits``, checked before any case is read) or the seeded 60/20/20 one."""
    ids = [case.case_id for case in task.cases]
    if config.splits is None:
        _say(warn, notices.tiny_task_notice(task.root, ids, config.seed))
        return prepared.make_split(ids, config.seed)
    split = splits.read_splits_file(Path(config.splits), ids, where=f"--splits {config.splits}")
    unused = splits.left_out(split, ids)
    if unused:
        shown = ", ".join(unused[:3]) + (", ..." if len(unused) > 3 else "")
        warn(f"note: --splits {config.splits} puts {len(unused)} case(s) in no split ({shown}): they are prepared, "
             "but neither trained nor evaluated")
    return split


def _split_source(config: PrepareConfig) -> dict:
    """Where the split came from, for the manifest: the seed, or the ``--splits`` file."""
    return {"seed": config.seed} if config.splits is None else {"file": str(Path(config.splits).resolve())}


def _check_overlap(task_dir: Path, out_dir: Path) -> None:
    source, target = task_dir.resolve(), out_dir.resolve()
    if target == source or target.is_relative_to(source) or source.is_relative_to(target):
        raise MedsegError(
            f"--out {out_dir}: overlaps the task folder {task_dir}; the input is never written to, "
            "choose an output folder outside it"
        )


def _check_occupant(task_dir: Path, out_dir: Path, overwrite: bool) -> None:
    occupant = prepared.describe_occupant(out_dir, task_dir)
    if occupant is not None and not overwrite:
        raise MedsegError(
            f"--out {out_dir}: holds {occupant}; choose another --out or pass --overwrite to replace it"
        )


def _say(warn: Warn, line: Optional[str]) -> None:
    if line:
        warn(line)


def _bar(items, desc: str, progress: bool):
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="case", file=sys.stderr, disable=not progress, dynamic_ncols=True)


def _write(task: msd.MSDTask, settings: dict, out_dir: Path, split, progress: bool, warn: Warn) -> List[dict]:
    """Transform every case into a (locked) staging folder and publish it as ``out_dir`` when all passed; ``split``
    is ``(the split, where it came from)``."""
    pipeline = transforms.build_preprocessing(settings, with_label=True)
    staging = staging_folder(out_dir)
    lock = leftovers.hold(staging)
    try:
        records, problems, notes, present = [], [], [], {}
        for case in _bar(task.cases, "prepare", progress):
            record, found = prepare_case(pipeline, settings, case, task, staging, (notes, present))
            problems += found
            if record is not None:
                records.append(record)
        if problems:
            raise DatasetError(problems, where=str(task.root))
        split, source = split
        for line in notes + notices.absent_class_notices(split, present, task.class_names):
            warn(line)
        prepared.write_json(staging / "manifest.json", {**_manifest(task, settings, records), "split": source})
        prepared.write_json(staging / splits.SPLITS_NAME, splits.splits_content(split))
        publish_folder(staging, out_dir)
    except OSError as error:
        remove_path(staging)
        raise _write_failure(out_dir, error) from error
    except BaseException:
        remove_path(staging)
        raise
    finally:
        leftovers.release(lock)
    return records


def _write_failure(out_dir: Path, error: OSError) -> MedsegError:
    """One line for a prepare whose writing failed (full disk ...): which file, why, and that nothing changed."""
    if isinstance(error, MedsegError):
        return error
    where = error.filename or "the staging folder"
    return WriteError(f"--out {out_dir}: cannot write {where} ({error.strerror or type(error).__name__}); nothing "
                      f"was published and what --out held is unchanged: free space or choose another --out")


def prepare_case(pipeline, settings: dict, case: msd.CaseEntry, task: msd.MSDTask, staging: Path, seen):
    """Transform and save one case; ``seen`` is ``(notes, present)``: warning lines, and the classes each case
    holds after preprocessing (case id -> set of label values)."""
    data, problems = msd.load_case(pipeline, settings, case, task)
    if data is None:
        return None, problems
    notes, present = seen
    notes += filter(None, [notices.blank_image_notice(data["image"], case.image_rel)])
    image = data["image"]
    too_large = capacity_problem(image, settings, case.image_rel)
    if too_large:
        raise MedsegError(too_large)  # the option is at fault, not the case: one line, at the first case
    original_affine = np.asarray(image.meta["original_affine"], dtype=np.float64)
    original_shape = np.asarray(image.meta["spatial_shape"], dtype=np.int64)
    before = notices.label_values(data["label"])
    data = pipeline(data, start=transforms.load_steps(with_label=True))
    image, label = data["image"], data["label"]
    present[case.case_id] = notices.label_values(label)
    notes += filter(None, [notices.lost_class_notice(case.label_rel, before - present[case.case_id],
                                                     task.class_names, settings)])  # fmt: skip
    if min(image.shape[1:]) == 0:
        return None, [f"{case.image_rel}: has no nonzero voxels to crop to; drop --crop-foreground or fix the image"]
    affine = np.asarray(image.affine, dtype=np.float64)
    arrays = {
        "image": np.ascontiguousarray(image.numpy(), dtype=np.float32),
        "label": np.ascontiguousarray(label.numpy(), dtype=np.uint8),
        "affine": affine,
        "original_affine": original_affine,
        "original_shape": original_shape,
    }
    prepared.save_case(staging, case.case_id, arrays)
    record = {
        "id": case.case_id,
        "image": case.image_rel,
        "label": case.label_rel,
        "original_shape": [int(s) for s in original_shape],
        "prepared_shape": [int(s) for s in image.shape[1:]],
        "spacing": [round(float(s), 6) for s in np.linalg.norm(original_affine[:3, :3], axis=0)],
        "prepared_spacing": [round(float(s), 6) for s in np.linalg.norm(affine[:3, :3], axis=0)],
        "source_digest": source_digest(case),
    }
    return record, []


def source_digest(case: msd.CaseEntry) -> str:
    """SHA-256 over a case's source files (image channels, then label): ``prepare --add`` re-prepares a case whose
    files changed (a corrected label) and keeps the others as they are."""
    import hashlib

    from medseg_mem.core.files.digest import sha256_file

    paths = [path for path, _ in case.image_files()] + [case.label]
    return hashlib.sha256("".join(sha256_file(path) for path in paths).encode()).hexdigest()


def capacity_problem(image, settings: dict, rel: str) -> Optional[str]:
    """Why resampling the loaded ``image`` to the settings' spacing cannot fit in memory (``None`` when it fits):
    its voxel count after resampling is planned from its extent in mm before any voxel is made."""
    from medseg_mem.core.machine import available_ram
    from medseg_mem.core.units import format_bytes
    from medseg_mem.data.headers import FLOAT_BYTES

    if settings["spacing"] is None:
        return None
    affine = np.asarray(image.affine, np.float64)
    extent = np.asarray(transforms.ras_order(image.shape[1:], affine)) * np.asarray(transforms.ras_spacing(affine))
    shape = np.maximum(1, np.round(extent / np.asarray(settings["spacing"], np.float64)))
    need = FLOAT_BYTES * image.shape[0] * float(np.prod(shape))
    free = available_ram()
    if need <= free:
        return None
    spacing = ",".join(f"{s:g}" for s in settings["spacing"])
    return (f"{rel}: resampled to --spacing {spacing} mm it would be {'x'.join(str(int(s)) for s in shape)} voxels, "
            f"{format_bytes(int(need))} as float32, more than the {format_bytes(free)} of memory available; "
            "choose a coarser --spacing (or keep the native grid)")


def _manifest(task: msd.MSDTask, settings: dict, records: List[dict]) -> dict:
    return {
        "format": prepared.FORMAT,
        "name": task.name,
        "source": str(task.root.resolve()),
        "layout": task.layout,
        "written_by": f"medseg-mem {__version__}",
        "class_names": list(task.class_names),
        "modalities": list(task.modalities),
        "in_channels": len(task.modalities),
        "preprocessing": settings,
        "cases": records,
    }
