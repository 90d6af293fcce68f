"""What PyTorch's CPU backend allocates beside the tensors it returns while a convolution runs: the slow kernels'
column buffer, oneDNN's reordered copies.

PyTorch runs a float32 convolution on the CPU with oneDNN only where its heuristic expects oneDNN to be faster
(``ConvParams::use_mkldnn``): a batch of one, a kernel no wider than 3 and ``N * C * D * H <= 20480`` (batch,
input channels and the first two spatial sizes) go to its own "slow" kernels instead, which unfold the input
into a column buffer (``im2col``) of ``C * kD * kH * kW`` values per output voxel (a transposed convolution:
``C_out * kD * kH * kW`` per input voxel), and copy a channels-last input to the contiguous layout first. The
buffer lives while the convolution runs (forward, and once more in its backward pass), so it is part of the peak
but no tensor the planner's trace sees. On the embedded default (32x32x96, widths 8-128) it is most of ``full``'s
inference peak: the first decoder convolution's 16 input channels unfold to 162 MiB for a 3 MiB output
(measured: 171 MiB above the tensors held before the call; bf16 and batches of two run on oneDNN and add none).

:func:`cpu_temporary_bytes` gives those bytes for one traced aten op, so the tracer can add them at that op
(:class:`~medseg_mem.memory.trace.LiveSetTracer`'s ``transient``). Where the row-chunked inference pass runs a
chunk on oneDNN because the whole convolution would run there (:func:`medseg_mem.models.lean.onednn_forced`),
there is no column buffer.

A convolution on oneDNN reorders its weights into its blocked layout at every call, and, where the tensors are not
channels-last (``--no-channels-last``) or a bf16 gradient is computed, copies of its input too
(:data:`ONEDNN_FORWARD_INPUTS`, :data:`ONEDNN_BACKWARD_INPUTS`, measured per call): what the channels-last layout
saves, now planned op by op instead of by a multiplier.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

SLOW_LIMIT = 20480  # N * C * D * H at or under which PyTorch's CPU heuristic runs a float32 convolution natively
# oneDNN reorders the weights into its blocked layout at every call: one copy forward (measured 30.4 MiB for a
# 27 MiB 512->512 kernel, fp32 and bf16 alike), two backward (81 MiB above the input for a 27 MiB kernel, 21 for 7)
ONEDNN_FORWARD_WEIGHTS = 1
ONEDNN_BACKWARD_WEIGHTS = 2
# ... and, unless the tensors are channels-last, the activations too: copies of the input, in input bytes, measured
# for a 32->32 convolution at 64^3 (forward 1.00 fp32 and bf16; backward 1.99 fp32, 4.07 bf16; channels-last
# backward 0 fp32, 2.07 bf16)
ONEDNN_FORWARD_INPUTS = {False: {"fp32": 1, "half": 1}, True: {"fp32": 0, "half": 0}}  # by channels_last
ONEDNN_BACKWARD_INPUTS = {False: {"fp32": 2, "half": 4}, True: {"fp32": 0, "half": 2}}


def cpu_transient(channels_last: bool) -> Callable:
    """``(func, args) -> bytes``: the CPU backend's temporaries of each traced op (for ``LiveSetTracer``)."""

    def transient(func, args, out) -> int:
        return cpu_temporary_bytes(func, args, out, channels_last)

    return transient


def cpu_temporary_bytes(func, args: Sequence, out, channels_last: bool = False) -> int:
    """Bytes the CPU backend allocates while the aten op ``func`` runs on ``args`` and returns ``out`` (0 for
    most ops).

    Example:
        >>> import torch
        >>> x, w = torch.zeros(1, 16, 32, 32, 96, device="meta"), torch.zeros(8, 16, 3, 3, 3, device="meta")
        >>> args = (x, w, None, [1, 1, 1], [1, 1, 1], [1, 1, 1], False, [0, 0, 0], 1)
        >>> cpu_temporary_bytes(torch.ops.aten.convolution.default, args, torch.zeros_like(x[:, :8])) // 2**20
        162
    """
    convolution = _convolution_args(func, args, out)
    if convolution is None:
        return 0
    image, weight, stride, dilation, transposed, groups, out_spatial = convolution
    backward = func is _aten().convolution_backward.default
    from medseg_mem.models.lean import onednn_forced

    if onednn_forced() or not runs_natively(image, weight, stride, dilation, groups):
        return onednn_bytes(image, weight, backward, channels_last)
    return _columns(image, weight, transposed, out_spatial) + (_nbytes(image) if channels_last else 0)


def onednn_bytes(image, weight, backward: bool, channels_last: bool) -> int:
    """oneDNN's reorders for one convolution: the weights, and (per layout and precision) the input's copies."""
    import torch

    precision = "fp32" if image.dtype == torch.float32 else "half"
    if backward:
        copies = ONEDNN_BACKWARD_INPUTS[bool(channels_last)][precision]
        return _nbytes(weight) * ONEDNN_BACKWARD_WEIGHTS + copies * _nbytes(image)
    copies = ONEDNN_FORWARD_INPUTS[bool(channels_last)][precision]
    return _nbytes(weight) * ONEDNN_FORWARD_WEIGHTS + copies * _nbytes(image)


def _aten():
    import torch

    return torch.ops.aten


def _convolution_args(func, args: Sequence, out):
    """``(input, weight, stride, dilation, transposed, groups, output spatial size)`` of a convolution op as the
    tracer sees it (``conv3d`` and ``conv_transpose3d`` under inference mode, ``convolution`` and its backward
    under autograd), or ``None`` for any other op."""
    import torch

    aten, ones = torch.ops.aten, (1, 1, 1)
    given = lambda index, default: args[index] if len(args) > index else default  # noqa: E731
    if func is aten.conv3d.default:
        return args[0], args[1], given(3, ones), given(5, ones), False, given(6, 1), tuple(out.shape[2:])
    if func is aten.conv_transpose3d.input:
        return args[0], args[1], given(3, ones), given(7, ones), True, given(6, 1), tuple(out.shape[2:])
    if func is aten.convolution.default:
        return args[0], args[1], args[3], args[5], args[6], args[8], tuple(out.shape[2:])
    if func is aten.convolution_backward.default:  # one buffer again (measured: 174 MiB for 162 forward)
        return args[1], args[2], args[4], args[6], args[7], args[9], tuple(args[0].shape[2:])
    return None


def runs_natively(image, weight, stride: Sequence[int], dilation: Sequence[int], groups: int) -> bool:
    """Whether PyTorch's CPU heuristic (``use_mkldnn``) leaves this float32 convolution to its slow kernels.

    Example:
        >>> import torch
        >>> small = torch.zeros(1, 16, 32, 32, 96, device="meta")
        >>> runs_natively(small, torch.zeros(8, 16, 3, 3, 3, device="meta"), [1] * 3, [1] * 3, 1)
        True
    """
    import torch

    if image.dtype != torch.float32:
        return False  # bf16 / fp16: oneDNN whatever the size (where the CPU supports it, as this machine's)
    if not torch.backends.mkldnn.is_available() or not torch.backends.mkldnn.enabled:
        return True
    pointwise = weight.shape[-1] == 1 and weight.shape[-2] == 1
    strided = any(s != 1 for s in stride) or any(d != 1 for d in dilation)
    if not (strided or image.shape[0] >= 16 or not pointwise or torch.get_num_threads() > 1):
        return True
    wide = weight.shape[-1] > 3 and weight.shape[-2] > 3
    size = image.shape[0] * image.shape[1] * image.shape[2] * image.shape[3]
    return not (groups > 1 or wide or image.shape[0] > 1 or size > SLOW_LIMIT)


def _columns(image, weight, transposed: bool, out_spatial: tuple) -> int:
    """Bytes of the slow kernel's column buffer (``im2col``; none for a 1x1x1 kernel, whose columns are its
    input)."""
    kernel = math.prod(weight.shape[2:])
    if kernel == 1:
        return 0
    if transposed:  # weight (C_in, C_out, k...): each input voxel spreads into C_out * k values
        return image.shape[0] * weight.shape[1] * kernel * math.prod(image.shape[2:]) * image.element_size()
    return image.shape[0] * image.shape[1] * kernel * math.prod(out_spatial) * image.element_size()


def _nbytes(tensor) -> int:
    return tensor.numel() * tensor.element_size()
