"""The trained run a prediction uses: resolve ``--checkpoint``, load every stage's best checkpoint, cross-check.

``--checkpoint`` is a run folder (``medseg-work/runs/<run id>``, holding ``run.json`` and one folder per stage)
or any ``.pt`` inside it; either way every stage of the run's variant is loaded from ``<stage>/best.pt``. A
single-stage checkpoint copied out of its run folder is accepted on its own. All stages must agree on the
variant, the classes, the modalities and the preprocessing, which is what makes a prediction reproduce the
training-time input exactly.

Example:
    >>> trained = open_trained_run(Path("medseg-work/runs/20240101T000000Z-cascade-000001"))  # doctest: +SKIP
    >>> trained.variant, sorted(trained.paths), trained.class_names  # doctest: +SKIP
    ('cascade', ['stage1', 'stage2'], ('background', 'long_rod', 'short_rod'))
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from medseg_mem.core.files.checkpoint import load_checkpoint
from medseg_mem.core.config import ModelConfig
from medseg_mem.core.errors import MedsegError
from medseg_mem.variants.registry import REGISTRY, get_variant

BEST = "best.pt"
SHARED_META = ("class_names", "modalities", "preprocessing")
SHARED_MODEL = ("slab_size", "downsample", "guidance", "num_classes")


@dataclass(frozen=True)
class TrainedRun:
    """What prediction needs from a trained run.

    Args:
        variant: ``full``, ``patch`` or ``cascade``.
        paths: stage name -> its ``best.pt`` (every stage of the variant).
        model: the variant settings the stages were trained with (widths, slab size, downsample, guidance).
        num_classes: classes including the background.
        class_names: indexed by label value.
        modalities: one name per image channel the networks expect.
        preprocessing: the settings for :func:`~medseg_mem.data.transforms.build_preprocessing`.
        dataset: the name of the dataset the run was trained on.
        augment: the training augmentation (``"none"`` for checkpoints that predate the option).
        fingerprint: the dataset's fingerprint (:mod:`medseg_mem.data.fingerprint`; empty for older checkpoints).
        specs: for an export (:mod:`~medseg_mem.variants.exported_run`), each stage's network settings
            (``in_channels``, ``out_channels``, ``channels``): ``paths`` then hold plain weights or ONNX models.
        onnx_dir: for an ONNX export, its folder (the stages run on ONNX Runtime).
    """

    variant: str
    paths: Dict[str, Path]
    model: ModelConfig
    num_classes: int
    class_names: Tuple[str, ...]
    modalities: Tuple[str, ...]
    preprocessing: dict
    dataset: str
    augment: str = "none"
    fingerprint: str = ""
    specs: Optional[Dict[str, Dict[str, Any]]] = None
    onnx_dir: Optional[Path] = None


def open_trained_run(checkpoint: Path) -> TrainedRun:
    """Resolve ``checkpoint`` (run folder or ``.pt``), load and cross-check every stage's best checkpoint.

    Raises:
        MedsegError: no such path, not a run folder, a file that is not a medseg-mem checkpoint (including
            one ``torch.load(weights_only=True)`` refuses), a missing stage, or stages that disagree.
    """
    variant, paths = stage_paths(Path(checkpoint))
    payloads = {stage: load_checkpoint(path) for stage, path in paths.items()}
    return _trained_run(variant, paths, payloads)


def stage_paths(checkpoint: Path) -> Tuple[str, Dict[str, Path]]:
    """The variant of ``checkpoint`` and the ``best.pt`` of each of its stages (all present)."""
    if checkpoint.is_dir():
        return _run_folder_paths(checkpoint)
    if not checkpoint.exists():
        raise MedsegError(f"--checkpoint {checkpoint}: no such file or folder; pass medseg-work/runs/<run id>")
    saved = load_checkpoint(checkpoint)
    variant, run_dir = _variant_name(saved, checkpoint), checkpoint.parent.parent
    stages = [stage.name for stage in get_variant(variant).stages()]
    if checkpoint.parent.name == saved["stage"] and (run_dir / saved["stage"] / BEST).is_file():
        return variant, _present(run_dir, variant, stages)
    if stages == [saved["stage"]]:
        return variant, {saved["stage"]: checkpoint}  # a single-stage checkpoint outside its run folder
    raise MedsegError(
        f"--checkpoint {checkpoint}: a {variant} {saved['stage']} checkpoint outside its run folder; "
        f"{variant} needs {' and '.join(stages)}: pass the run folder instead"
    )


def _run_folder_paths(run_dir: Path) -> Tuple[str, Dict[str, Path]]:
    record = run_dir / "run.json"
    try:
        variant = json.loads(record.read_text(encoding="utf-8"))["variant"]
    except FileNotFoundError:
        raise MedsegError(
            f"--checkpoint {run_dir}: not a run folder (no run.json); pass medseg-work/runs/<run id> or a .pt in it"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise MedsegError(f"--checkpoint {record}: unreadable run record ({error}); pass a best.pt instead") from error
    if variant not in REGISTRY:
        raise MedsegError(f"--checkpoint {record}: unknown variant {variant!r}; valid: {', '.join(REGISTRY)}")
    return variant, _present(run_dir, variant, [stage.name for stage in get_variant(variant).stages()])


def _present(run_dir: Path, variant: str, stages) -> Dict[str, Path]:
    paths = {stage: run_dir / stage / BEST for stage in stages}
    missing = [f"{stage}/{BEST}" for stage, path in paths.items() if not path.is_file()]
    if missing:
        raise MedsegError(
            f"--checkpoint {run_dir}: the {variant} run lacks {', '.join(missing)} (training stopped before it "
            f"validated); finish it with `medseg-mem run --resume {run_dir.name}`"
        )
    return paths


def _variant_name(saved: Dict[str, Any], path: Path) -> str:
    variant = saved["variant"]
    if variant not in REGISTRY:
        raise MedsegError(f"checkpoint {path}: unknown variant {variant!r}; valid: {', '.join(REGISTRY)}")
    return variant


def _trained_run(variant: str, paths: Dict[str, Path], payloads: Dict[str, Dict[str, Any]]) -> TrainedRun:
    first_stage = next(iter(payloads))
    first = payloads[first_stage]
    for stage, saved in payloads.items():
        _check_stage(saved, paths[stage], variant, stage)
        _check_agreement(saved, first, paths[stage], paths[first_stage])
    meta, spec = first["meta"], first["model"]
    model = ModelConfig.from_dict(spec)
    return TrainedRun(
        variant=variant,
        paths=dict(paths),
        model=model,
        num_classes=int(spec["num_classes"]),
        class_names=tuple(meta["class_names"]),
        modalities=tuple(meta["modalities"]),
        preprocessing=dict(meta["preprocessing"]),
        dataset=str(meta.get("dataset", "")),
        augment=str(first.get("training", {}).get("augment", "none")),
        fingerprint=str(meta.get("dataset_fingerprint", "")),
    )


def _check_stage(saved: Dict[str, Any], path: Path, variant: str, stage: str) -> None:
    """The checkpoint is the expected stage and carries what prediction needs."""
    if saved["variant"] != variant or saved["stage"] != stage:
        raise MedsegError(
            f"checkpoint {path}: holds {saved['variant']}/{saved['stage']}, expected {variant}/{stage}; "
            "was it copied from another run?"
        )
    meta, spec = saved.get("meta"), saved["model"]
    missing = [k for k in SHARED_META if not isinstance(meta, dict) or k not in meta]
    missing += [k for k in SHARED_MODEL + ("channels",) if not isinstance(spec, dict) or k not in spec]
    if missing:
        raise MedsegError(
            f"checkpoint {path}: lacks {', '.join(missing)} (written by an older medseg-mem?); retrain with "
            "`medseg-mem run` to predict with it"
        )


def _check_agreement(saved: Dict[str, Any], first: Dict[str, Any], path: Path, first_path: Path) -> None:
    """Every stage of one run must share classes, modalities, preprocessing and the variant settings."""
    differ = [k for k in SHARED_META if saved["meta"][k] != first["meta"][k]]
    differ += [k for k in SHARED_MODEL if saved["model"][k] != first["model"][k]]
    if differ:
        raise MedsegError(
            f"checkpoint {path}: disagrees with {first_path} on {', '.join(differ)}; "
            "all stages must come from one run (retrain or restore the run folder)"
        )
