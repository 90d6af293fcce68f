"""Export a trained run into a MONAI bundle folder: ``models/*.pt`` and a ``configs/metadata.json`` that fits them.

The last stage's weights (the bundle's ``network_def``) go to ``models/model.pt``, every earlier stage's to
``models/<stage>.pt`` (the cascade: ``models/stage1.pt``, built by ``stage1_def``); each file is a plain
``state_dict``, what ``python -m monai.bundle ckpt_export`` loads, with its SHA-256 beside it (``model.pt.sha256``;
MONAI's tools do not read it: ``sha256sum -c models/model.pt.sha256`` checks a copy before use). Both configs are
read and checked before anything is written. ``metadata.json`` keeps its descriptive fields;
``network_data_format`` is rewritten from the checkpoint (input channels = what ``network_def`` takes, the
output one uint8 channel of class indices) and ``medseg_mem`` records the recipe the configs read: classes,
widths per stage, slab size, downsample factor, guidance and the preprocessing settings.

``--format onnx`` lives in :mod:`medseg_mem.export.onnx`.

Example:
    >>> export_bundle(Path("medseg-work/runs/<run id>"), Path("bundles/patch"))  # doctest: +SKIP
    ExportedBundle(variant='patch', files=(PosixPath('bundles/patch/models/model.pt'), ...))
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Tuple

from medseg_mem.core.files.atomic import write_json_atomic
from medseg_mem.core.errors import MedsegError

MODEL_FILE = "model.pt"


@dataclass(frozen=True)
class ExportedBundle:
    """What :func:`export_bundle` or :func:`export_onnx` wrote: the variant and every file (models first,
    metadata last; each model with its ``.sha256`` beside it), and the temporary files of an export killed before
    that were removed."""

    variant: str
    files: Tuple[Path, ...]
    removed: Tuple[Path, ...] = ()

    def line(self) -> str:
        removed = (f"; removed {len(self.removed)} temporary file(s) an interrupted export left: "
                   f"{', '.join(path.name for path in self.removed)}") if self.removed else ""  # fmt: skip
        return f"exported {self.variant} into {', '.join(str(path) for path in self.files)}{removed}"


def export_bundle(checkpoint: Path, bundle_dir: Path) -> ExportedBundle:
    """Write the weights of the run at ``checkpoint`` into ``bundle_dir/models`` and fit its metadata to them.

    Args:
        checkpoint: a run folder (or any ``.pt`` in it), as ``medseg-mem predict --checkpoint`` takes.
        bundle_dir: a bundle of the run's variant (``bundles/<variant>``, or a copy of it).

    Returns:
        the files written.

    Raises:
        MedsegError: not a trained run, not a bundle folder, or a bundle of another variant.

    Example:
        >>> export_bundle(Path("medseg-work/runs/<run id>"), Path("bundles/cascade")).line()  # doctest: +SKIP
        'exported cascade into bundles/cascade/models/model.pt, bundles/cascade/models/stage1.pt, ...'
    """
    from medseg_mem.core.files.checkpoint import load_checkpoint
    from medseg_mem.variants.trained_run import open_trained_run

    trained = open_trained_run(Path(checkpoint))
    meta_path, metadata = check_bundle(Path(bundle_dir), trained.variant)  # every input checked before any write
    payloads = {stage: load_checkpoint(path) for stage, path in trained.paths.items()}
    metadata = fitted_metadata(metadata, trained, payloads)
    files = [write_weights(Path(bundle_dir) / "models" / name, payloads[stage]["state_dict"])
             for stage, name in stage_files(trained.variant).items()]  # fmt: skip
    files.append(write_json_atomic(meta_path, metadata, indent=4))
    return ExportedBundle(trained.variant, tuple(files))


def check_bundle(bundle_dir: Path, variant: str) -> Tuple[Path, Dict[str, Any]]:
    """``bundle_dir/configs/metadata.json`` and what it holds, when ``bundle_dir`` is a bundle of ``variant``
    whose two configs are JSON objects.

    Raises:
        MedsegError: naming ``--bundle``, the file, what is missing or wrong, or which variant the bundle serves.
    """
    meta, inference = bundle_dir / "configs" / "metadata.json", bundle_dir / "configs" / "inference.json"
    if not (meta.is_file() and inference.is_file()):
        raise MedsegError(f"--bundle {bundle_dir}: not a MONAI bundle (needs configs/metadata.json and "
                          f"configs/inference.json); pass bundles/{variant}")  # fmt: skip
    served = read_config(inference, bundle_dir, variant).get("variant")
    if served != variant:
        raise MedsegError(f"--bundle {bundle_dir}: a bundle of the {served} variant, but the run is {variant}; "
                          f"pass bundles/{variant}")  # fmt: skip
    return meta, read_config(meta, bundle_dir, variant)


def read_config(path: Path, bundle_dir: Path, variant: str) -> Dict[str, Any]:
    """The JSON object in the bundle's config file ``path``.

    Raises:
        MedsegError: the file cannot be read, is not valid JSON or holds something else than an object.
    """
    where = f"--bundle {bundle_dir}: configs/{path.name}"
    fix = f"fix it, or restore it from medseg-mem's bundles/{variant}"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise MedsegError(f"{where} cannot be read ({getattr(error, 'strerror', None) or error}); {fix}") from error
    except json.JSONDecodeError as error:
        raise MedsegError(f"{where} is not valid JSON ({error}); {fix}") from error
    if not isinstance(config, dict):
        raise MedsegError(f"{where} must hold a JSON object; it holds a {type(config).__name__}; {fix}")
    return config


def stage_files(variant: str) -> Dict[str, str]:
    """Stage name -> file under ``models/``: the last stage is ``model.pt``, earlier ones ``<stage>.pt``.

    Example:
        >>> stage_files("cascade")
        {'stage1': 'stage1.pt', 'stage2': 'model.pt'}
    """
    from medseg_mem.variants import get_variant

    names = [stage.name for stage in get_variant(variant).stages()]
    return {name: MODEL_FILE if name == names[-1] else f"{name}.pt" for name in names}


def write_weights(path: Path, state_dict: Dict[str, Any]) -> Path:
    """Save a plain ``state_dict`` (tensors only: loads with ``weights_only=True``) to ``path`` atomically, with its
    SHA-256 in ``path.sha256`` (``sha256sum -c`` checks it), without deep-supervision heads (``network_def`` is the
    plain U-Net, whose output does not use them)."""
    import torch

    from medseg_mem.core.files.digest import replacing_with_digest
    from medseg_mem.models.build import inference_state_dict

    with replacing_with_digest(path, suffix=".pt") as temp:
        torch.save({name: tensor.cpu() for name, tensor in inference_state_dict(state_dict).items()}, temp)
    return path


def fitted_metadata(metadata: Dict[str, Any], trained, payloads: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """``metadata`` with ``network_data_format``, the class texts and ``medseg_mem`` taken from the run."""
    recipe = bundle_recipe(trained, payloads)
    names = ", ".join(f"{index} {name}" for index, name in enumerate(trained.class_names))
    channels = input_channel_names(trained, recipe["stages"][last_stage(recipe)]["in_channels"])
    return {
        **metadata,
        "image_classes": f"{len(trained.modalities)} channel(s): {', '.join(trained.modalities)}; normalised as "
                         "medseg_mem#preprocessing says",
        "label_classes": f"one channel of class indices: {names}",
        "pred_classes": f"one channel of uint8 class indices: {names}",
        "network_data_format": network_data_format(trained, channels),
        "medseg_mem": recipe,
    }


def bundle_recipe(trained, payloads: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """What the bundle's configs read (``@_meta_#medseg_mem#...``) to rebuild the networks and the pipeline."""
    files = stage_files(trained.variant)
    stages = {stage: {"file": f"models/{files[stage]}", "in_channels": int(saved["model"]["in_channels"]),
                      "out_channels": int(saved["model"]["num_classes"]),
                      "channels": [int(width) for width in saved["model"]["channels"]]}
              for stage, saved in payloads.items()}  # fmt: skip
    model = trained.model
    return {"variant": trained.variant, "dataset": trained.dataset, "dataset_fingerprint": trained.fingerprint,
            "num_classes": trained.num_classes,
            "class_names": list(trained.class_names), "modalities": list(trained.modalities),
            "slab_size": model.slab_size, "downsample": model.downsample, "guidance": model.guidance,
            "stages": stages, "preprocessing": trained.preprocessing}  # fmt: skip


def last_stage(recipe: Dict[str, Any]) -> str:
    """The stage ``network_def`` builds (the last one)."""
    return list(recipe["stages"])[-1]


def input_channel_names(trained, in_channels: int) -> Dict[str, str]:
    """``channel_def`` of ``network_def``'s input: the modalities, then the cascade's guidance channels."""
    names = list(trained.modalities)
    guidance = in_channels - len(names)
    if guidance == 1 and trained.model.guidance == "label":
        names.append(f"stage-1 labels / {max(1, trained.num_classes - 1)}, upsampled")
    else:
        names += [f"stage-1 {name} (one-hot, upsampled)" for name in trained.class_names[1 : 1 + guidance]]
    return {str(index): name for index, name in enumerate(names)}


def network_data_format(trained, channel_def: Dict[str, str]) -> Dict[str, Any]:
    """MONAI's ``network_data_format``: ``network_def`` takes float32 channels, returns one uint8 label channel."""
    from medseg_mem.data.transforms import is_ct

    slab = trained.variant != "full"
    modality = "CT" if all(is_ct(name) for name in trained.modalities) else "MR"
    space = ["*", "*", "*"]
    image = {"type": "image", "format": "hounsfield" if modality == "CT" else "magnitude", "modality": modality,
             "num_channels": len(channel_def), "spatial_shape": space, "dtype": "float32", "value_range": [],
             "is_patch_data": slab, "channel_def": channel_def}  # fmt: skip
    pred = {"type": "image", "format": "labels", "num_channels": 1, "spatial_shape": space, "dtype": "uint8",
            "value_range": [0, trained.num_classes - 1], "is_patch_data": slab,
            "channel_def": {"0": "class index: " + ", ".join(f"{i} {n}" for i, n in enumerate(trained.class_names))}}
    return {"inputs": {"image": image}, "outputs": {"pred": pred}}
