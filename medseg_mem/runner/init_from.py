"""``run --init-from RUN``: fine-tune a trained run on the current prepared dataset.

Each stage of the new run starts from the matching stage's best checkpoint of ``RUN`` (its weights only: the
optimizer, the step count and the learning-rate schedule start afresh, so ``--steps`` / ``--time-limit`` are the
fine-tuning's own budget), and trains on the current prepared dataset with the plan and memory guard of any run.
The network is ``RUN``'s (its widths, slab size, downsampling, guidance), so a ``--channels`` or ``--variant``
that differs is refused, as is a dataset of other channels or classes. Cascade fold models of
``--stage2-guidance predicted`` train from random weights, as in any run. The seed still decides everything
random (sampling, augmentation), so a fine-tuned run repeats bit for bit.

Example:
    >>> init = initial_weights(request, dataset)  # doctest: +SKIP
    >>> init.variant, sorted(init.checkpoints)  # doctest: +SKIP
    ('full', ['full'])
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

from medseg_mem.core.config import ModelConfig, RunRequest
from medseg_mem.core.errors import MedsegError
from medseg_mem.data.prepared import PreparedDataset
from medseg_mem.variants import get_variant

#: The network settings a fine-tuned run takes from the run it starts from (``--channels`` ... must agree).
NETWORK_FIELDS = {"channels": "--channels", "slab_size": "--slab-size", "downsample": "--downsample",
                  "guidance": "--guidance", "deep_supervision": "--deep-supervision"}  # fmt: skip


@dataclass(frozen=True)
class InitFrom:
    """The trained run a new run starts from: its id and folder, variant, network settings and best checkpoint per
    stage."""

    run_id: str
    run_dir: Path
    variant: str
    model: ModelConfig
    checkpoints: Dict[str, Path]


def initial_weights(request: RunRequest, dataset: PreparedDataset, run_id: Optional[str] = None) -> InitFrom:
    """Find and check the run ``request.init_from`` (or ``run_id``, a resumed run's recorded ``init_from``).

    Args:
        request: the run request; ``init_from`` is a run id under ``runs_dir`` or a run folder.
        dataset: the prepared dataset the new run trains on.
        run_id: the run to start from instead of ``request.init_from``.

    Raises:
        MedsegError: one line naming ``--init-from``: no such run, a stage without its best checkpoint, a
            ``--variant`` other than the run's, a ``--channels`` (or other network option) other than the run's,
            or a dataset of other channels or classes than the run was trained on (both values named).
    """
    given = run_id or request.init_from
    run_dir = Path(given) if Path(given).is_dir() else Path(request.runs_dir) / given
    record = _record(given, run_dir, request.runs_dir)
    variant, model = record["variant"], _model(record)
    _check_variant(given, variant, request.variants)
    _check_network(given, model, request.changes.given())
    checkpoints = {stage.name: _best(given, run_dir, stage.name) for stage in get_variant(variant).stages()}
    _check_dataset(given, next(iter(checkpoints.values())), dataset)
    return InitFrom(run_dir.name, run_dir, variant, model, checkpoints)


def _record(given: str, run_dir: Path, runs_dir: Path) -> dict:
    path = run_dir / "run.json"
    if not path.is_file():
        raise MedsegError(f"--init-from {given}: no trained run at {run_dir} (no run.json); give a run id under "
                          f"--runs {runs_dir} or a run folder")  # fmt: skip
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return {"variant": record["variant"], "model": dict(record["model"])}
    except (ValueError, KeyError, TypeError) as error:
        raise MedsegError(f"--init-from {given}: {path} is not a readable run record ({error}); give another run")


def _model(record: dict) -> ModelConfig:
    return ModelConfig.from_dict(record["model"])


def _check_variant(given: str, variant: str, asked) -> None:
    asked = tuple(asked)
    if asked in ((), ("all",)) or asked == (variant,):
        return
    raise MedsegError(f"--init-from {given}: is a {variant} run but --variant {','.join(asked)} was asked; a run "
                      f"fine-tunes its own variant: drop --variant or give a {','.join(asked)} run")  # fmt: skip


def _check_network(given: str, model: ModelConfig, changes: dict) -> None:
    for field, option in NETWORK_FIELDS.items():
        if field in changes and changes[field] != getattr(model, field):
            raise MedsegError(f"{option} {_shown(changes[field])}: --init-from {given} was trained with {option} "
                              f"{_shown(getattr(model, field))}; its weights fit only that network: drop {option}")


def _shown(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def _best(given: str, run_dir: Path, stage: str) -> Path:
    path = run_dir / stage / "best.pt"
    if not path.is_file():
        raise MedsegError(f"--init-from {given}: stage {stage} has no best checkpoint ({path}); the run did not "
                          "finish training: resume it first (run --resume) or give another run")  # fmt: skip
    return path


def _check_dataset(given: str, checkpoint: Path, dataset: PreparedDataset) -> None:
    from medseg_mem.core.files.checkpoint import load_checkpoint

    meta = load_checkpoint(checkpoint).get("meta", {})
    for key, ours in (("modalities", dataset.modalities), ("class_names", dataset.class_names)):
        theirs = list(meta.get(key, ours))
        if theirs != list(ours):
            what = "channels" if key == "modalities" else "classes"
            raise MedsegError(f"--init-from {given}: was trained on {what} {theirs} but --data {dataset.root} has "
                              f"{what} {list(ours)}; fine-tune on a dataset of the same task")  # fmt: skip
