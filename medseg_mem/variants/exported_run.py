"""A trained run as exported: a MONAI bundle folder (``export --format bundle``) or an ONNX folder
(``export --format onnx``), opened as a :class:`~medseg_mem.variants.trained_run.TrainedRun` so ``predict`` takes
either where it takes a run folder.

A bundle holds plain ``state_dict`` files (``models/model.pt``, the cascade's ``models/stage1.pt``) and, in
``configs/metadata.json``'s ``medseg_mem`` section, everything else predict needs: the variant, classes,
modalities, preprocessing and each stage's widths (``specs``). An ONNX folder holds ``<stage>.onnx`` and
``recipe.json`` with the same (``onnx_dir``: it runs on ONNX Runtime). Each model file is checked against the
SHA-256 the export wrote beside it (``model.pt.sha256``, ``<stage>.onnx.sha256``) before it is used.

Example:
    >>> trained = open_any_run(Path("bundles/patch"))  # doctest: +SKIP
    >>> trained.variant, trained.paths  # doctest: +SKIP
    ('patch', {'patch': PosixPath('bundles/patch/models/model.pt')})
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

from medseg_mem.core.config import ModelConfig
from medseg_mem.core.errors import MedsegError
from medseg_mem.variants import REGISTRY
from medseg_mem.variants.trained_run import TrainedRun, open_trained_run

METADATA = Path("configs") / "metadata.json"
RECIPE = "recipe.json"


def open_any_run(checkpoint: Path) -> TrainedRun:
    """A run folder or ``.pt`` (:func:`~medseg_mem.variants.trained_run.open_trained_run`), an exported bundle
    folder or an ONNX export folder.

    Raises:
        MedsegError: none of these, or an export whose record is unreadable or whose model files are missing or
            fail their SHA-256 check.
    """
    checkpoint = Path(checkpoint)
    if checkpoint.is_dir() and not (checkpoint / "run.json").is_file():
        if (checkpoint / METADATA).is_file():
            return open_bundle(checkpoint)
        if (checkpoint / RECIPE).is_file():
            return open_onnx(checkpoint)
    return open_trained_run(checkpoint)


def is_export(folder: Path) -> bool:
    """Whether ``folder`` is an exported bundle or ONNX folder (not a run folder)."""
    folder = Path(folder)
    return folder.is_dir() and not (folder / "run.json").is_file() and \
        ((folder / METADATA).is_file() or (folder / RECIPE).is_file())  # fmt: skip


def open_bundle(bundle: Path) -> TrainedRun:
    """The run exported into ``bundle`` (its ``models/`` and ``configs/metadata.json``'s ``medseg_mem``)."""
    recipe = _read(bundle / METADATA).get("medseg_mem")
    if not isinstance(recipe, dict) or not isinstance(recipe.get("stages"), dict):
        raise MedsegError(f"--checkpoint {bundle}: a bundle without exported weights (no medseg_mem section in "
                          f"{METADATA}); export a run into it: medseg-mem export --format bundle --checkpoint RUN "
                          f"--bundle {bundle}")  # fmt: skip
    paths = {stage: _checked(bundle / entry["file"], "bundle weights", bundle)
             for stage, entry in recipe["stages"].items()}  # fmt: skip
    return _trained(recipe, paths, specs=dict(recipe["stages"]), where=bundle / METADATA)


def open_onnx(folder: Path) -> TrainedRun:
    """The run exported into the ONNX folder ``folder`` (its ``recipe.json`` and ``<stage>.onnx``)."""
    recipe = _read(folder / RECIPE)
    stages = recipe.get("stages")
    if not isinstance(stages, list):
        raise MedsegError(f"--checkpoint {folder / RECIPE}: not an ONNX export's recipe (no stages list); export "
                          "again with `medseg-mem export --format onnx`")  # fmt: skip
    paths = {stage["name"]: _checked(folder / stage["file"], "ONNX model", folder) for stage in stages}
    specs = {stage["name"]: stage for stage in stages}
    return _trained(recipe, paths, specs=specs, where=folder / RECIPE, onnx_dir=folder)


def _trained(recipe: Dict[str, Any], paths, specs, where: Path, onnx_dir: Optional[Path] = None) -> TrainedRun:
    try:
        variant = recipe["variant"]
        if variant not in REGISTRY:
            raise MedsegError(f"{where}: unknown variant {variant!r}; valid: {', '.join(REGISTRY)}")
        last = specs[list(paths)[-1]]
        model = ModelConfig(tuple(last["channels"]), int(recipe["slab_size"]), float(recipe["downsample"]),
                            recipe["guidance"])  # fmt: skip
        return TrainedRun(variant=variant, paths=dict(paths), model=model, num_classes=int(recipe["num_classes"]),
                          class_names=tuple(recipe["class_names"]), modalities=tuple(recipe["modalities"]),
                          preprocessing=dict(recipe["preprocessing"]), dataset=str(recipe.get("dataset", "")),
                          fingerprint=str(recipe.get("dataset_fingerprint", "")), specs=specs,
                          onnx_dir=onnx_dir)  # fmt: skip
    except (KeyError, TypeError, ValueError) as error:
        raise MedsegError(f"--checkpoint {where}: incomplete export record (missing or bad {error}); export the "
                          "run again") from error  # fmt: skip


def _checked(path: Path, label: str, folder: Path) -> Path:
    """``path`` after its SHA-256 check against the sidecar the export wrote."""
    from medseg_mem.core.files.digest import verify_digest

    if not path.is_file():
        raise MedsegError(f"--checkpoint {folder}: {path} is missing; export the run into it again")
    verify_digest(path, label, remake="export the run again with `medseg-mem export`")
    return path


def _read(path: Path) -> Dict[str, Any]:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise MedsegError(f"--checkpoint {path}: unreadable ({error}); export the run again") from error
    if not isinstance(content, dict):
        raise MedsegError(f"--checkpoint {path}: must hold a JSON object; export the run again")
    return content
