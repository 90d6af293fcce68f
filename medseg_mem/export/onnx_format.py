"""The ONNX form of a trained run's stages: what is exported (:class:`OnnxUNet3D`), how the files and their
tensors are named, where they go (``<run folder>/onnx``), and :class:`OnnxNetwork`, one exported stage in an ONNX
Runtime session, called like the PyTorch network.

:class:`OnnxUNet3D` is :class:`~medseg_mem.models.label_net.LabelUNet3D`'s logits, whose padding amounts and crop
are computed from the input's shape with traced operations, so one ONNX graph takes any batch and spatial size.
``UNet3D.forward`` does not trace to a general graph: its padding amounts are Python ints (fixed to the example's
shape) and its no-grad path fills buffers in place (in the traced graph those copies differ from PyTorch by about
0.02 even at the example's own shape).

``onnx`` and ``onnxruntime`` are the optional extra ``onnx`` (``pip install 'medseg-mem[onnx]'``);
:func:`require_onnx` says so in one line when they are missing. The export writes these files
(:mod:`~medseg_mem.export.onnx`) and ``predict --engine onnxruntime`` runs them (:mod:`~medseg_mem.export.onnx_engine`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import torch

from medseg_mem.core.errors import MedsegError
from medseg_mem.core.files.digest import verify_digest
from medseg_mem.models.label_net import LabelUNet3D

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
