"""What ``medseg-mem plan`` plans: the image, the classes and the settings ``run`` or ``predict`` would use.

* ``--data PREPARED``: the dataset's largest case, its classes, the size of its training split, and the settings
  ``run --data PREPARED`` trains with: the dataset's profile (the embedded default: widths 8-128; real data: the
  spec's 32-512, batch 2, :mod:`medseg_mem.runner.settings`) with the options given to ``plan`` on top;
* ``--run RUN``: a trained run's inference: its variant, widths, slab size and classes, on ``--shape`` or its
  dataset's largest case;
* ``--shape C,X,Y,Z --classes K``: real data's profile with the options given on top.

Only the options the user typed override the profile (click's parameter source), as in ``run``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import click

from medseg_mem.core.changes import RunChanges
from medseg_mem.core.config import ModelConfig, TrainConfig

#: ``plan`` options that are ``run`` settings (``TrainConfig``/``ModelConfig`` fields), by parameter name.
SETTINGS = {"channels": "channels", "slab_size": "slab_size", "downsample": "downsample", "guidance": "guidance",
            "batch_size": "batch_size", "precision": "precision", "checkpointing": "checkpointing",
            "channels_last": "channels_last", "workers": "workers", "cache": "cache_bytes"}  # fmt: skip


@dataclass(frozen=True)
class Target:
    """The image, classes and settings a plan is for; ``variant``: the trained run's, when planning one."""

    shape: Tuple[int, int, int, int]
    classes: int
    model: ModelConfig
    train: TrainConfig
    cases: Optional[int] = None
    variant: Optional[str] = None
    preprocessing: Optional[dict] = None  # the trained run's preprocessing settings


def typed(ctx: click.Context, values: dict, **aliased) -> RunChanges:
    """The settings of the :data:`SETTINGS` options the user typed on the command line, and those given under
    an older name (``aliased``: setting -> value or ``None``)."""
    settings = {setting: value for setting, value in aliased.items() if value is not None}
    for name, setting in SETTINGS.items():
        source = ctx.get_parameter_source(name)
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP") and values.get(name) is not None:
            settings[setting] = values[name]
    return RunChanges.of(**settings)


def plan_target(shape, classes, data: Optional[Path], run: Optional[Path], changes: RunChanges) -> Target:
    """The :class:`Target` of ``--data``, ``--run`` or ``--shape``/``--classes`` (see the module docstring).

    Raises:
        click.UsageError: none or several of the ways, or ``--shape`` without ``--classes`` (and the reverse).
        MedsegError: a dataset or run that cannot be opened.
    """
    from medseg_mem.core.locations import default_prepared, run_folder
    from medseg_mem.runner.settings import profile, with_changes

    run = None if run is None else run_folder(run)

    if data is None and run is None and shape is None and classes is None and default_prepared().is_dir():
        data = default_prepared()  # what `run` trains by default
    _one_way(shape, classes, data, run)
    if run is not None:
        return _run_target(run, shape)
    if data is not None:
        from medseg_mem.data.prepared import PreparedDataset

        dataset = PreparedDataset.open(data)
        model, train = with_changes(*profile(dataset.name), changes)
        return Target(dataset.largest_image_shape(), dataset.num_classes, model, train, len(dataset.ids("train")))
    model, train = with_changes(*profile(""), changes)
    return Target(tuple(shape), int(classes), model, train)


def _one_way(shape, classes, data, run) -> None:
    """Refuse anything but exactly one of ``--data``, ``--run`` (with an optional ``--shape``) or ``--shape`` with
    ``--classes``."""
    given = [name for name, value in (("--shape", shape), ("--classes", classes)) if value is not None]
    if data is not None and run is not None:
        raise click.UsageError("--data plans what run trains, --run what a trained run predicts; give one of them")
    if data is not None and given:
        raise click.UsageError(f"--data takes the shape and classes from the dataset; drop {' and '.join(given)}")
    if run is not None and classes is not None:
        raise click.UsageError("--run takes the classes from the trained run; drop --classes")
    if data is None and run is None and len(given) < 2:
        missing = " and ".join(name for name in ("--shape", "--classes") if name not in given)
        raise click.UsageError(f"give --shape and --classes, --data PREPARED or --run RUN (missing {missing})")


def _run_target(run: Path, shape) -> Target:
    """A trained run's inference: its settings, on ``shape`` or its dataset's largest case."""
    from medseg_mem.core.errors import MedsegError
    from medseg_mem.variants.trained_run import open_trained_run

    trained = open_trained_run(run)
    if shape is None:
        shape = _run_dataset_shape(Path(run), trained)
    elif shape[0] != len(trained.modalities):
        raise click.BadParameter(f"the run's networks take {len(trained.modalities)} channel(s) "
                                 f"({', '.join(trained.modalities)}); got {shape[0]}", param_hint="--shape")
    if shape is None:
        raise MedsegError(f"--run {run}: its dataset cannot be opened to find the largest case; give --shape C,X,Y,Z")
    return Target(tuple(shape), trained.num_classes, trained.model, TrainConfig(), variant=trained.variant,
                  preprocessing=trained.preprocessing)  # fmt: skip


def _run_dataset_shape(run: Path, trained) -> Optional[Tuple[int, ...]]:
    """The largest case of the dataset named in the run's ``run.json`` (``None`` when it cannot be opened)."""
    from medseg_mem.core.errors import MedsegError

    folder = run if run.is_dir() else run.parent.parent
    try:
        data_dir = json.loads((folder / "run.json").read_text(encoding="utf-8"))["data_dir"]
        from medseg_mem.data.prepared import PreparedDataset

        return PreparedDataset.open(Path(data_dir)).largest_image_shape()
    except (OSError, ValueError, KeyError, TypeError, MedsegError):
        return None
