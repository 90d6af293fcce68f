"""ONNX Runtime in place of PyTorch for ``medseg-mem predict --engine onnxruntime``.

Each stage runs as an :class:`~medseg_mem.export.onnx_format.OnnxNetwork`, called like a stage's U-Net: a float
``(N, C, X, Y, Z)`` tensor in, the logits ``(N, K, X, Y, Z)`` out (float32, CPU), so every variant's recipe runs
unchanged (it only calls ``net(x)``): slab stitching, the cascade's guidance and the label maps are the same code as
with PyTorch.

The sessions come from the run's ONNX export (``<run folder>/onnx``, written by
``medseg-mem export --format onnx``; :func:`medseg_mem.export.onnx.export_onnx`). Where the run has no export, or
one made from other weights (its ``recipe.json`` records each stage checkpoint's SHA-256), predict exports the
networks into a temporary folder first (about a second per stage) and deletes it once the sessions are loaded.

Example:
    >>> run = onnx_variant(open_trained_run(Path("medseg-work/runs/<run id>")))  # doctest: +SKIP
    >>> run.nets["patch"](torch.zeros(1, 1, 32, 32, 16)).shape  # doctest: +SKIP
    torch.Size([1, 3, 32, 32, 16])
    >>> run.segment(torch.zeros(1, 1, 32, 32, 40)).shape  # doctest: +SKIP
    torch.Size([1, 1, 32, 32, 40])
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

from medseg_mem.core.config import InferenceConfig
from medseg_mem.core.errors import OptionError, look_up_option
from medseg_mem.core.files.digest import read_digests, sha256_file
from medseg_mem.export.onnx import write_onnx
from medseg_mem.export.onnx_format import ONNX_FORMAT, RECIPE_FILE, OnnxNetwork, default_onnx_dir, require_onnx
from medseg_mem.variants import TrainedVariant, get_variant

#: ``--engine`` values of ``predict``: PyTorch (the default) or ONNX Runtime's CPU provider.
ENGINE_NAMES = ("torch", "onnxruntime")


def check_engine(engine: str, device: str, precision: str) -> str:
    """The device to resolve for ``engine``: ``device`` itself for torch, ``cpu`` for onnxruntime.

    Raises:
        MedsegError: an unknown engine, or onnxruntime that is not installed, or with ``--device cuda`` or a
            precision other than fp32.

    Example:
        >>> check_engine("onnxruntime", "auto", "fp32")
        'cpu'
    """
    look_up_option(engine, ENGINE_NAMES, "--engine")
    if engine == "torch":
        return device
    if device == "cuda":
        raise OptionError("--device", "must be cpu or auto with --engine onnxruntime (ONNX Runtime's CPU "
                          "provider runs the models)", device)  # fmt: skip
    if precision != "fp32":
        raise OptionError("--precision", "must be fp32 with --engine onnxruntime (the ONNX models are float32)",
                          precision)  # fmt: skip
    require_onnx("--engine onnxruntime")
    return "cpu"


def onnx_variant(trained, inference: InferenceConfig = None, labels_device: Any = None) -> TrainedVariant:
    """The trained run segmenting with its ONNX models (:func:`onnx_networks`): the same
    :class:`~medseg_mem.variants.trained.TrainedVariant` as with PyTorch, the sessions in place of the U-Nets.

    Raises:
        MedsegError: onnxruntime is missing, or a model cannot be loaded.
    """
    nets = onnx_networks(trained)
    return TrainedVariant(get_variant(trained.variant), nets, trained.model, trained.num_classes, inference,
                          labels_device)  # fmt: skip


def onnx_networks(trained) -> Dict[str, OnnxNetwork]:
    """One :class:`OnnxNetwork` per stage of ``trained``, from its export (a fresh one when it has none).

    Raises:
        MedsegError: onnxruntime is missing, or a model cannot be loaded.
    """
    require_onnx("--engine onnxruntime")
    if trained.onnx_dir is not None:  # an ONNX export given as --checkpoint: its models, digests checked
        return {stage: OnnxNetwork(path) for stage, path in trained.paths.items()}
    with exported_models(trained) as folder:
        return {stage: OnnxNetwork(folder / f"{stage}.onnx") for stage in trained.paths}


@contextlib.contextmanager
def exported_models(trained) -> Iterator[Path]:
    """The run's export folder when it matches the run's weights, else a temporary export (removed on exit)."""
    folder = default_onnx_dir(trained)
    if export_problem(trained, folder) is None:
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="medseg-onnx-") as temp:
        write_onnx(trained, Path(temp))
        yield Path(temp)


def export_problem(trained, folder: Path) -> Optional[str]:
    """Why ``folder`` is not a usable ONNX export of ``trained`` (``None`` when it is).

    Example:
        >>> export_problem(open_trained_run(run), Path("/nowhere"))  # doctest: +SKIP
        '/nowhere/recipe.json: no such file'
    """
    recipe_path = Path(folder) / RECIPE_FILE
    try:
        recipe = json.loads(recipe_path.read_text(encoding="utf-8"))
        stages = {stage["name"]: stage for stage in recipe["stages"]}
    except FileNotFoundError:
        return f"{recipe_path}: no such file"
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"{recipe_path}: unreadable ({error})"
    if recipe.get("format") != ONNX_FORMAT or recipe.get("variant") != trained.variant:
        return f"{recipe_path}: not an ONNX export of a {trained.variant} run"
    for stage, path in trained.paths.items():
        if not (Path(folder) / f"{stage}.onnx").is_file():
            return f"{Path(folder) / stage}.onnx: no such file"
        if stages.get(stage, {}).get("checkpoint_sha256") not in checkpoint_digests(path):
            return f"{recipe_path}: exported from other weights than {path}"
    return None


def checkpoint_digests(path: Path) -> Tuple[str, ...]:
    """The SHA-256 digests ``path`` may have: those of its ``.sha256`` sidecar, else the file's own."""
    listed = read_digests(Path(path))
    return tuple(listed) if listed is not None else (sha256_file(Path(path)),)
