"""Export a trained run into a MONAI bundle folder: ``models/*.pt`` and a ``configs/metadata.json`` that fits them.

The last stage's weights (the bundle's ``network_def``) go to ``models/model.pt``, every earlier stage's to
``models/<stage>.pt`` (the cascade: ``models/stage1.pt``, built by ``stage1_def``); each file is a plain
``state_dict``, what ``python -m monai.bundle ckpt_export`` loads. ``metadata.json`` keeps its descriptive fields;
``network_data_format`` is rewritten from the checkpoint (input channels = what ``network_def`` takes, the
output one uint8 channel of class indices) and ``medseg_mem`` records the recipe the configs read: classes,
widths per stage, slab size, downsample factor, guidance and the preprocessing settings.

``--format onnx`` (:func:`export_onnx`) writes one ``<stage>.onnx`` per stage (input ``image`` float32
``(N, C, X, Y, Z)``, output ``logits`` ``(N, K, X, Y, Z)``, batch and spatial axes dynamic; a slab stage's model
is the same network, run on slabs) and ``recipe.json``: how the stages fit together (:func:`onnx_recipe`).
Each model is checked against PyTorch on a small input before it replaces the previous file.

Example:
    >>> export_bundle(Path("medseg-work/runs/<run id>"), Path("bundles/patch"))  # doctest: +SKIP
    ExportedBundle(variant='patch', files=(PosixPath('bundles/patch/models/model.pt'), ...))
    >>> export_onnx(Path("medseg-work/runs/<run id>")).line()  # doctest: +SKIP
    'exported patch into medseg-work/runs/<run id>/onnx/patch.onnx, medseg-work/runs/<run id>/onnx/recipe.json'
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from medseg_mem.atomic import write_json_atomic
from medseg_mem.errors import MedsegError

MODEL_FILE = "model.pt"
#: ONNX opset of ``--format onnx`` (ONNX Runtime 1.14 and later run it).
ONNX_OPSET = 17
#: Largest difference allowed between the ONNX model's logits and PyTorch's on the export check.
ONNX_TOLERANCE = 1e-3


@dataclass(frozen=True)
class ExportedBundle:
    """What :func:`export_bundle` or :func:`export_onnx` wrote: the variant and every file (models first,
    metadata last)."""

    variant: str
    files: Tuple[Path, ...]

    def line(self) -> str:
        return f"exported {self.variant} into {', '.join(str(path) for path in self.files)}"


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
    from medseg_mem.checkpoint import load_checkpoint
    from medseg_mem.predict.trained_run import open_trained_run

    trained = open_trained_run(Path(checkpoint))
    meta_path = check_bundle(Path(bundle_dir), trained.variant)
    payloads = {stage: load_checkpoint(path) for stage, path in trained.paths.items()}
    files = [write_weights(Path(bundle_dir) / "models" / name, payloads[stage]["state_dict"])
             for stage, name in stage_files(trained.variant).items()]  # fmt: skip
    metadata = fitted_metadata(json.loads(meta_path.read_text()), trained, payloads)
    files.append(write_json_atomic(meta_path, metadata, indent=4))
    return ExportedBundle(trained.variant, tuple(files))


def check_bundle(bundle_dir: Path, variant: str) -> Path:
    """``bundle_dir/configs/metadata.json`` when ``bundle_dir`` is a bundle of ``variant``.

    Raises:
        MedsegError: naming ``--bundle``, what is missing or which variant the bundle serves.
    """
    meta, inference = bundle_dir / "configs" / "metadata.json", bundle_dir / "configs" / "inference.json"
    if not (meta.is_file() and inference.is_file()):
        raise MedsegError(f"--bundle {bundle_dir}: not a MONAI bundle (needs configs/metadata.json and "
                          f"configs/inference.json); pass bundles/{variant}")  # fmt: skip
    served = json.loads(inference.read_text()).get("variant")
    if served != variant:
        raise MedsegError(f"--bundle {bundle_dir}: a bundle of the {served} variant, but the run is {variant}; "
                          f"pass bundles/{variant}")  # fmt: skip
    return meta


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
    """Save a plain ``state_dict`` (tensors only: loads with ``weights_only=True``) to ``path`` atomically."""
    import torch

    from medseg_mem.atomic import replacing

    with replacing(path, suffix=".pt") as temp:
        torch.save({name: tensor.cpu() for name, tensor in state_dict.items()}, temp)
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
    return {"variant": trained.variant, "dataset": trained.dataset, "num_classes": trained.num_classes,
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


def export_onnx(checkpoint: Path, out_dir: Optional[Path] = None) -> ExportedBundle:
    """Write one ONNX model per stage of the run at ``checkpoint``, and ``recipe.json``, into ``out_dir``.

    Args:
        checkpoint: a run folder (or any ``.pt`` in it), as ``medseg-mem predict --checkpoint`` takes.
        out_dir: the folder to write (created when missing); default ``<run folder>/onnx``, where
            ``medseg-mem predict --engine onnxruntime`` looks for the models.

    Returns:
        the files written: ``<stage>.onnx`` in stage order, then ``recipe.json``.

    Raises:
        MedsegError: onnx/onnxruntime not installed, not a trained run, a folder that cannot be written, or a
            model whose logits differ from PyTorch's (then that model's previous file is kept).

    Example:
        >>> export_onnx(Path("medseg-work/runs/<run id>"), Path("onnx/cascade")).line()  # doctest: +SKIP
        'exported cascade into onnx/cascade/stage1.onnx, onnx/cascade/stage2.onnx, onnx/cascade/recipe.json'
    """
    from medseg_mem.onnx_engine import default_onnx_dir, require_onnx
    from medseg_mem.predict.trained_run import open_trained_run
    from medseg_mem.writable import check_output_folder

    require_onnx("--format onnx")
    trained = open_trained_run(Path(checkpoint))
    folder = Path(out_dir) if out_dir is not None else default_onnx_dir(trained)
    check_output_folder(folder, "--out")
    return write_onnx(trained, folder)


def write_onnx(trained, folder: Path) -> ExportedBundle:
    """Export every stage of ``trained`` (a :class:`~medseg_mem.predict.trained_run.TrainedRun`) into ``folder``.

    ``recipe.json`` is removed first and written last, each model replaces its file atomically: an interrupted
    export leaves no recipe (``predict --engine onnxruntime`` then exports afresh), never one that names models
    of other weights.

    Raises:
        MedsegError: a file cannot be written, or a model fails :func:`check_onnx_logits`.
    """
    from medseg_mem.atomic import write_error
    from medseg_mem.checkpoint import load_checkpoint
    from medseg_mem.onnx_engine import RECIPE_FILE

    recipe_path = Path(folder) / RECIPE_FILE
    try:
        recipe_path.unlink(missing_ok=True)
    except OSError as error:
        raise write_error(recipe_path, error.strerror or str(error)) from error
    payloads = {stage: load_checkpoint(path) for stage, path in trained.paths.items()}
    files = [export_stage_onnx(saved, Path(folder) / f"{stage}.onnx") for stage, saved in payloads.items()]
    files.append(write_json_atomic(recipe_path, onnx_recipe(trained, payloads)))
    return ExportedBundle(trained.variant, tuple(files))


def export_stage_onnx(saved: Dict[str, Any], path: Path) -> Path:
    """Export the network of one stage checkpoint to ``path``: traced, checked against PyTorch, then moved
    into place atomically.

    Raises:
        MedsegError: the exported logits differ from PyTorch's (:func:`check_onnx_logits`); ``path`` is kept.
    """
    from medseg_mem.atomic import replacing
    from medseg_mem.onnx_engine import OnnxUNet3D

    spec = saved["model"]
    net = OnnxUNet3D(int(spec["in_channels"]), int(spec["num_classes"]), channels=tuple(spec["channels"]))
    net.load_state_dict(saved["state_dict"])
    example = example_input(net.eval())
    with replacing(path, suffix=".onnx") as temp:
        trace_to_onnx(net, example, temp)
        check_onnx_logits(temp, saved, example, path)
    return path


def example_input(net) -> Any:
    """The input the export traces and checks: batch 2, every spatial size off a multiple of the padding divisor
    (so the padding and the crop are in the graph), seeded noise.

    Example:
        >>> from medseg_mem.onnx_engine import OnnxUNet3D
        >>> tuple(example_input(OnnxUNet3D(1, 2, channels=(2, 4, 8))).shape)
        (2, 1, 5, 6, 7)
    """
    import torch

    size = [net.divisor + extra for extra in (1, 2, 3)]
    return torch.randn(2, net.in_channels, *size, generator=torch.Generator().manual_seed(0))


def trace_to_onnx(net, example, path: Path) -> None:
    """``torch.onnx.export`` with the TorchScript tracer (``dynamo=False``), batch and spatial axes dynamic.

    torch 2.13's default, torch.export-based exporter (it also needs ``onnxscript``) did not give a general graph
    of the U-Net: with ``Dim`` axes it wrote the example's shape into the graph, with ``Dim.AUTO`` the padding
    amounts stayed the example's, and ONNX Runtime failed on every other shape. The tracer on
    :class:`~medseg_mem.onnx_engine.OnnxUNet3D` keeps the axes dynamic; its deprecation warning is silenced here.
    """
    import warnings

    import torch

    from medseg_mem.onnx_engine import INPUT_NAME, OUTPUT_NAME

    axes = {0: "batch", 2: "x", 3: "y", 4: "z"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(net, (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes})  # fmt: skip


def check_onnx_logits(onnx_path: Path, saved: Dict[str, Any], example, target: Path) -> float:
    """The largest difference between the ONNX model's logits and the stage's PyTorch U-Net's (what
    ``predict --engine torch`` runs) on ``example``.

    Raises:
        MedsegError: a difference above ``ONNX_TOLERANCE``, naming ``target`` and the difference.
    """
    import torch

    from medseg_mem.config import ModelConfig
    from medseg_mem.models.build import build_network
    from medseg_mem.onnx_engine import OnnxNetwork

    spec = saved["model"]
    reference = build_network(int(spec["in_channels"]), int(spec["num_classes"]), ModelConfig(tuple(spec["channels"])))
    reference.load_state_dict(saved["state_dict"])
    with torch.inference_mode():
        expected = reference.eval()(example)
    difference = float((OnnxNetwork(onnx_path)(example) - expected).abs().max())
    if not difference <= ONNX_TOLERANCE:
        raise MedsegError(f"{target}: the ONNX model's logits differ from PyTorch's by {difference:.3g} (more than "
                          f"{ONNX_TOLERANCE:g}) on a test input; the previous file is kept. Report it with your "
                          f"torch and onnxruntime versions")  # fmt: skip
    return difference


def onnx_recipe(trained, payloads: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """``recipe.json``: what runs the exported models as ``predict`` does (stages, slabs, resampling, guidance,
    classes, preprocessing) and the SHA-256 of the checkpoint each model came from."""
    import torch

    from medseg_mem import __version__
    from medseg_mem.onnx_engine import INPUT_NAME, ONNX_FORMAT, OUTPUT_NAME
    from medseg_mem.resample import guidance_channels
    from medseg_mem.variants import get_variant

    model = trained.model
    stages = [onnx_stage(stage, payloads[stage.name], trained.paths[stage.name], model)
              for stage in get_variant(trained.variant).stages()]  # fmt: skip
    return {"format": ONNX_FORMAT, "variant": trained.variant, "dataset": trained.dataset,
            "num_classes": trained.num_classes, "class_names": list(trained.class_names),
            "modalities": list(trained.modalities), "stages": stages, "slab_size": model.slab_size,
            "slab_axis": "last", "downsample": model.downsample, "guidance": model.guidance,
            "guidance_channels": guidance_channels(model.guidance, trained.num_classes),
            "input": {"name": INPUT_NAME, "dtype": "float32", "shape": ["batch", "channels", "x", "y", "z"]},
            "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", "classes", "x", "y", "z"]},
            "recipe": recipe_steps(trained.variant), "opset": ONNX_OPSET, "preprocessing": trained.preprocessing,
            "exported_with": {"medseg_mem": __version__, "torch": torch.__version__}}  # fmt: skip


def onnx_stage(stage, saved: Dict[str, Any], path: Path, model) -> Dict[str, Any]:
    """One stage of ``recipe.json``: its file, channels, slab or whole volume, resolution and source checkpoint."""
    from medseg_mem.digest import sha256_file

    spec = saved["model"]
    return {"name": stage.name, "file": f"{stage.name}.onnx", "in_channels": int(spec["in_channels"]),
            "out_channels": int(spec["num_classes"]), "channels": [int(width) for width in spec["channels"]],
            "slab": stage.slab, "scale": float(stage.factor(model)), "guided": stage.guided,
            "checkpoint_sha256": sha256_file(Path(path))}  # fmt: skip


def recipe_steps(variant: str) -> List[str]:
    """How ``predict`` combines the stages of ``variant``, in words (``recipe.json``'s ``recipe``)."""
    slabs = ("cut the input into slabs of slab_size voxels along the last axis (the last one zero-padded), "
             "run {} on each slab and stitch the logits back; labels = argmax over the classes")  # fmt: skip
    if variant == "full":
        return ["logits = full.onnx(image), the whole preprocessed volume; labels = argmax over the classes"]
    if variant == "patch":
        return [slabs.format("patch.onnx")]
    return [
        "stage1: resample the image trilinearly (align_corners=False) to round(size * downsample) voxels per axis, "
        "softmax(stage1.onnx(small image))",
        "guidance: the stage-1 probabilities upsampled trilinearly to the image's size, argmax, encoded as "
        "'guidance' says (onehot: one channel per foreground class; label: class index / (num_classes - 1))",
        "stage2: input = image channels then guidance channels; " + slabs.format("stage2.onnx"),
    ]
