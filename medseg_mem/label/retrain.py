"""Fine-tune a served variant on the labels MONAI Label has received, into a new run beside the app.

The labelled scans (``datastore.datalist()``: ``{"image", "label"}`` paths) are copied into an MSD task folder
named after the served run's dataset, with its classes and channels; that folder is prepared with the run's own
preprocessing (reader, grid, cropping), and the new run starts from the served run's weights (``run --init-from``,
:mod:`~medseg_mem.runner.init_from`) with the run's own model and training settings, the budget (``steps``) aside,
under the memory guard of any run. Nothing of the user's is touched: tasks, prepared folders, runs and a results
CSV go under ``work_dir`` (``<app>/work``), each under a new name.

Example:
    >>> new_run = retrain(Path("runs/<id>"), [(Path("s/a.nii.gz"), Path("s/labels/final/a.nii.gz"))] * 3,
    ...                   Path("app/work"), steps=50)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Callable, Sequence, Tuple

from medseg_mem.core.changes import RunChanges
from medseg_mem.core.config import RunRequest
from medseg_mem.core.errors import MedsegError, OptionError
from medseg_mem.core.prepare_config import PrepareConfig
from medseg_mem.data.prepare import prepare
from medseg_mem.report.results import new_run_id
from medseg_mem.runner.run import run_variants
from medseg_mem.runner.settings import load_run_record
from medseg_mem.variants.trained_run import TrainedRun, open_trained_run

#: A run needs a case in each of its train, val and test splits.
MIN_CASES = 3
Case = Tuple[Path, Path]


def retrain(run_dir: Path, cases: Sequence[Case], work_dir: Path, steps: int,
            echo: Callable[[str], None] = print) -> Path:  # fmt: skip
    """Fine-tune ``run_dir`` on the labelled ``cases`` for ``steps`` steps per stage; return the new run folder.

    Args:
        run_dir: the run the variant serves now (its settings are kept).
        cases: ``(scan, label map)`` pairs, NIfTI files in one voxel grid each.
        work_dir: where the task, the prepared dataset, the new run and ``results.csv`` are written.
        steps: training steps of each stage.
        echo: receives the run's progress lines.

    Raises:
        MedsegError: fewer than :data:`MIN_CASES` cases, ``steps`` below 1, a scan whose channels or labels do not
            fit the run (from ``prepare``), or a plan over the memory budget (from ``run``).
    """
    if steps < 1:
        raise OptionError("steps", "must be a positive number of training steps", steps)
    if len(cases) < MIN_CASES:
        raise MedsegError(f"{len(cases)} labelled scan(s) received; training needs at least {MIN_CASES} (one each "
                          "for train, val and test): save more labels first")  # fmt: skip
    trained = open_trained_run(run_dir)
    name = new_run_id(trained.variant)
    task = labelled_task(cases, trained, Path(work_dir) / "tasks" / name)
    prepare(prepare_config(trained, task, Path(work_dir) / "prepared" / name), progress=False, warn=echo)
    request = RunRequest((trained.variant,), Path(work_dir) / "prepared" / name, Path(work_dir) / "results.csv",
                         Path(work_dir) / "runs", changes=same_settings(run_dir, steps), progress=False,
                         init_from=str(Path(run_dir).resolve()))  # fmt: skip
    (result,) = run_variants(request, echo)
    return Path(work_dir) / "runs" / result.run_id


def labelled_task(cases: Sequence[Case], trained: TrainedRun, folder: Path) -> Path:
    """An MSD task folder of copies of ``cases``, with the run's dataset name, channels and classes."""
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    training = []
    for image, label in cases:  # the scans keep their names: case ids are the ids the datastore shows
        shutil.copyfile(image, folder / "imagesTr" / Path(image).name)
        shutil.copyfile(label, folder / "labelsTr" / Path(label).name)
        training.append({"image": f"./imagesTr/{Path(image).name}", "label": f"./labelsTr/{Path(label).name}"})
    meta = {"name": trained.dataset, "modality": {str(i): m for i, m in enumerate(trained.modalities)},
            "labels": {str(i): c for i, c in enumerate(trained.class_names)}, "numTraining": len(training),
            "training": training}  # fmt: skip
    (folder / "dataset.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return folder


def prepare_config(trained: TrainedRun, task_dir: Path, out_dir: Path) -> PrepareConfig:
    """Prepare ``task_dir`` onto the run's grid: its reader and cropping, and its spacing (a median spacing
    kept at the value the run was prepared with)."""
    settings = trained.preprocessing
    spacing = tuple(settings["spacing"]) if settings.get("spacing") else None
    return PrepareConfig(task_dir=task_dir, out_dir=out_dir, reader=settings["reader"], spacing=spacing,
                         crop_foreground=bool(settings.get("crop_foreground")))  # fmt: skip


def same_settings(run_dir: Path, steps: int) -> RunChanges:
    """The run's model and training settings as the changes ``run`` lays over the profile, with ``steps``
    (validated at most every ``steps``) and no time limit or snapshots."""
    record = load_run_record(Path(run_dir))
    train = dataclasses.replace(record["train"], steps=steps, val_every=min(record["train"].val_every, steps),
                                time_limit=None, snapshots=())  # fmt: skip
    return RunChanges.of(**dataclasses.asdict(record["model"]), **dataclasses.asdict(train))
