"""``medseg-mem export --format onnx``: one ONNX model per stage of a trained run, and ``recipe.json``.

Each ``<stage>.onnx`` takes ``image`` float32 ``(N, C, X, Y, Z)`` and gives ``logits`` ``(N, K, X, Y, Z)``, batch
and spatial axes dynamic; a slab stage's model is the same network, run on slabs. ``recipe.json`` says how the
stages fit together (:func:`onnx_recipe`). Each model is checked against PyTorch on a small input before it
replaces the previous file, with its SHA-256 beside it (``<stage>.onnx.sha256``, checked when
:class:`~medseg_mem.export.onnx_format.OnnxNetwork` loads it); ``recipe.json`` is removed first and written last. The
export holds the folder's :mod:`~medseg_mem.core.files.output_lock` and first removes the temporary files an export
killed before (SIGKILL, SIGTERM) left there.

Example:
    >>> export_onnx(Path("medseg-work/runs/<run id>")).line()  # doctest: +SKIP
    'exported patch into medseg-work/runs/<run id>/onnx/patch.onnx, medseg-work/runs/<run id>/onnx/recipe.json'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from medseg_mem import __version__
from medseg_mem.core.config import ModelConfig
from medseg_mem.core.errors import MedsegError
from medseg_mem.core.files.atomic import remove_stale_temporaries, write_error, write_json_atomic
from medseg_mem.core.files.checkpoint import load_checkpoint
from medseg_mem.core.files.digest import replacing_with_digest, sha256_file, sidecar
from medseg_mem.core.files.output_lock import output_lock
from medseg_mem.core.files.writable import check_output_folder
from medseg_mem.export.bundle import ExportedBundle
from medseg_mem.export.onnx_format import (
    INPUT_NAME,
    ONNX_FORMAT,
    OUTPUT_NAME,
    RECIPE_FILE,
    OnnxNetwork,
    OnnxUNet3D,
    default_onnx_dir,
    require_onnx,
)
from medseg_mem.models.build import build_network, inference_state_dict
from medseg_mem.variants import get_variant
from medseg_mem.variants.resample import guidance_channels
from medseg_mem.variants.trained_run import open_trained_run

#: ONNX opset of ``--format onnx`` (ONNX Runtime 1.14 and later run it).
ONNX_OPSET = 17
#: Largest difference allowed between the ONNX model's logits and PyTorch's on the export check.
ONNX_TOLERANCE = 1e-3


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
    require_onnx("--format onnx")
    trained = open_trained_run(Path(checkpoint))
    folder = Path(out_dir) if out_dir is not None else default_onnx_dir(trained)
    check_output_folder(folder, "--out")
    return write_onnx(trained, folder)


def write_onnx(trained, folder: Path) -> ExportedBundle:
    """Export every stage of ``trained`` (a :class:`~medseg_mem.variants.trained_run.TrainedRun`) into ``folder``.

    ``recipe.json`` is removed first and written last, each model replaces its file atomically: an interrupted
    export leaves no recipe (``predict --engine onnxruntime`` then exports afresh), never one that names models
    of other weights.

    Raises:
        MedsegError: a file cannot be written, or a model fails :func:`check_onnx_logits`.
    """
    recipe_path = Path(folder) / RECIPE_FILE
    models = [Path(folder) / f"{stage}.onnx" for stage in trained.paths]
    with output_lock(Path(folder), "--out", "export", inside=True):
        stale = remove_stale_temporaries(folder, [RECIPE_FILE, *(p.name for p in models),
                                                  *(sidecar(p).name for p in models)])  # fmt: skip
        try:
            recipe_path.unlink(missing_ok=True)
        except OSError as error:
            raise write_error(recipe_path, error.strerror or str(error)) from error
        payloads = {stage: load_checkpoint(path) for stage, path in trained.paths.items()}
        files = [export_stage_onnx(payloads[stage], path) for stage, path in zip(trained.paths, models)]
        files.append(write_json_atomic(recipe_path, onnx_recipe(trained, payloads)))
    return ExportedBundle(trained.variant, tuple(files), tuple(stale))


def export_stage_onnx(saved: Dict[str, Any], path: Path) -> Path:
    """Export the network of one stage checkpoint to ``path``: traced, checked against PyTorch, then moved
    into place atomically with its SHA-256 sidecar.

    Raises:
        MedsegError: the exported logits differ from PyTorch's (:func:`check_onnx_logits`); ``path`` is kept.
    """
    spec = saved["model"]
    net = OnnxUNet3D(int(spec["in_channels"]), int(spec["num_classes"]), channels=tuple(spec["channels"]))
    net.load_state_dict(inference_state_dict(saved["state_dict"]))  # deep-supervision heads stay behind
    example = example_input(net.eval())
    with replacing_with_digest(path, suffix=".onnx") as temp:
        trace_to_onnx(net, example, temp)
        check_onnx_logits(temp, saved, example, path)
    return path


def example_input(net) -> Any:
    """The input the export traces and checks: batch 2, every spatial size off a multiple of the padding divisor
    (so the padding and the crop are in the graph), seeded noise.

    Example:
        >>> from medseg_mem.export.onnx_format import OnnxUNet3D
        >>> tuple(example_input(OnnxUNet3D(1, 2, channels=(2, 4, 8))).shape)
        (2, 1, 5, 6, 7)
    """
    size = [net.divisor + extra for extra in (1, 2, 3)]
    return torch.randn(2, net.in_channels, *size, generator=torch.Generator().manual_seed(0))


def trace_to_onnx(net, example, path: Path) -> None:
    """``torch.onnx.export`` with the TorchScript tracer (``dynamo=False``), batch and spatial axes dynamic.

    torch 2.13's default, torch.export-based exporter (it also needs ``onnxscript``) did not give a general graph
    of the U-Net: with ``Dim`` axes it wrote the example's shape into the graph, with ``Dim.AUTO`` the padding
    amounts stayed the example's, and ONNX Runtime failed on every other shape. The tracer on
    :class:`~medseg_mem.export.onnx_format.OnnxUNet3D` keeps the axes dynamic; its deprecation warning is silenced here.
    """
    import warnings

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

    spec = saved["model"]
    model = ModelConfig.from_dict(spec)
    reference = build_network(int(spec["in_channels"]), int(spec["num_classes"]), model)
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

    model = trained.model
    stages = [onnx_stage(stage, payloads[stage.name], trained.paths[stage.name], model)
              for stage in get_variant(trained.variant).stages()]  # fmt: skip
    return {"format": ONNX_FORMAT, "variant": trained.variant, "dataset": trained.dataset,
            "dataset_fingerprint": trained.fingerprint,
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
