"""ONNX Runtime in place of PyTorch for ``medseg-mem predict --engine onnxruntime``.

:class:`OnnxNetwork` is called like a stage's U-Net: a float ``(N, C, X, Y, Z)`` tensor in, the logits
``(N, K, X, Y, Z)`` out (float32, CPU), so every variant's ``segment`` runs unchanged (it only calls
``net(x)``): slab stitching, the cascade's guidance and the label maps are the same code as with PyTorch.

The sessions come from the run's ONNX export (``<run folder>/onnx``, written by
``medseg-mem export --format onnx``; :func:`medseg_mem.export.onnx.export_onnx`). Where the run has no export, or
one made from other weights (its ``recipe.json`` records each stage checkpoint's SHA-256), predict exports the
networks into a temporary folder first (about a second per stage) and deletes it once the sessions are loaded.

:class:`OnnxUNet3D` is what is exported: :class:`~medseg_mem.models.label_net.LabelUNet3D`'s logits, whose
padding amounts and crop are computed from the input's shape with traced operations, so one ONNX graph takes
any batch and spatial size. ``UNet3D.forward`` does not trace to a general graph: its padding amounts are
Python ints (fixed to the example's shape) and its no-grad path fills buffers in place (in the traced graph
those copies differ from PyTorch by about 0.02 even at the example's own shape).

``onnx`` and ``onnxruntime`` are the optional extra ``onnx`` (``pip install 'medseg-mem[onnx]'``);
:func:`require_onnx` says so in one line when they are missing.

Example:
    >>> net = OnnxNetwork(Path("medseg-work/runs/<run id>/onnx/patch.onnx"))  # doctest: +SKIP
    >>> net(torch.zeros(1, 1, 32, 32, 16)).shape  # doctest: +SKIP
    torch.Size([1, 3, 32, 32, 16])
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

import torch

from medseg_mem.core.errors import MedsegError, OptionError, look_up_option
from medseg_mem.models.label_net import LabelUNet3D

#: ``--engine`` values of ``predict``: PyTorch (the default) or ONNX Runtime's CPU provider.
ENGINE_NAMES = ("torch", "onnxruntime")
EXTRA_INSTALL = "pip install 'medseg-mem[onnx]'"
#: Where ``export --format onnx`` writes by default and ``predict --engine onnxruntime`` looks: in the run folder.
ONNX_FOLDER = "onnx"
RECIPE_FILE = "recipe.json"
ONNX_FORMAT = "medseg-mem-onnx/1"
INPUT_NAME, OUTPUT_NAME = "image", "logits"


class OnnxUNet3D(LabelUNet3D):
    """The spec U-Net as exported to ONNX: ``forward`` returns :meth:`LabelUNet3D.logits` (``UNet3D``'s logits).

    Example:
        >>> net = OnnxUNet3D(1, 3, channels=(2, 4)).eval()
        >>> net(torch.zeros(1, 1, 3, 4, 5)).shape
        torch.Size([1, 3, 3, 4, 5])
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x)


def require_onnx(option: str) -> Tuple[object, object]:
    """The ``onnx`` and ``onnxruntime`` modules.

    Args:
        option: what needs them (``--engine onnxruntime``, ``--format onnx``), for the message.

    Raises:
        MedsegError: one line naming ``option``, the missing package and the extra that installs it.
    """
    try:
        import onnx
        import onnxruntime
    except ImportError as error:
        missing = error.name or "onnx/onnxruntime"
        raise MedsegError(f"{option} needs the optional packages onnx and onnxruntime ({missing} is not "
                          f"installed); install them with {EXTRA_INSTALL}") from error  # fmt: skip
    return onnx, onnxruntime


class OnnxNetwork:
    """One exported stage in an ONNX Runtime session (CPU provider), called like the PyTorch network.

    Args:
        path: the stage's ``.onnx`` file.
        threads: intra-op threads (default: ``torch.get_num_threads()``, what PyTorch would use).

    Raises:
        MedsegError: onnxruntime is not installed, the file fails its SHA-256 check (``<stage>.onnx.sha256``,
            written by the export), or it is not a loadable ONNX model.
    """

    def __init__(self, path: Path, threads: Optional[int] = None) -> None:
        from medseg_mem.core.files.digest import verify_digest

        _, onnxruntime = require_onnx("--engine onnxruntime")
        verify_digest(Path(path), "ONNX model", remake="export it again with `medseg-mem export --format onnx`")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.log_severity_level = 3  # errors only: no warnings about unused initialisers on stderr
        self.path = Path(path)
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001 - onnxruntime raises its own exception types
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise MedsegError(f"ONNX model {path}: cannot be loaded ({reason}); export it again with "
                              "`medseg-mem export --format onnx`") from error  # fmt: skip
        self.input_name = self.session.get_inputs()[0].name
        self.weight_bytes = self.path.stat().st_size  # the weights, held by the session (predict's peak counts them)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``x`` ``(N, C, X, Y, Z)`` as a float32 CPU tensor ``(N, K, X, Y, Z)``."""
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (logits,) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(logits)


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


def run_folder(trained) -> Path:
    """The folder of the run: the one holding ``<stage>/best.pt`` and ``run.json``, else the ``.pt``'s folder."""
    stage, path = next(iter(trained.paths.items()))
    path = Path(path)
    if path.parent.name == stage and (path.parent.parent / "run.json").is_file():
        return path.parent.parent
    return path.parent


def default_onnx_dir(trained) -> Path:
    """``<run folder>/onnx``: where ``export --format onnx`` writes without ``--out``."""
    return run_folder(trained) / ONNX_FOLDER


def onnx_networks(trained) -> Dict[str, OnnxNetwork]:
    """One :class:`OnnxNetwork` per stage of ``trained``, from its export (a fresh one when it has none).

    Raises:
        MedsegError: onnxruntime is missing, or a model cannot be loaded.
    """
    require_onnx("--engine onnxruntime")
    with exported_models(trained) as folder:
        return {stage: OnnxNetwork(folder / f"{stage}.onnx") for stage in trained.paths}


@contextlib.contextmanager
def exported_models(trained) -> Iterator[Path]:
    """The run's export folder when it matches the run's weights, else a temporary export (removed on exit)."""
    folder = default_onnx_dir(trained)
    if export_problem(trained, folder) is None:
        yield folder
        return
    from medseg_mem.export.onnx import write_onnx

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
    from medseg_mem.core.files.digest import read_digests, sha256_file

    listed = read_digests(Path(path))
    return tuple(listed) if listed is not None else (sha256_file(Path(path)),)
