"""The U-Net's inference pass without autograd, a few slices at a time: about one tensor per level's width.

A plain pass holds, at the first level's decoder step, the skip, the up-sampled tensor, their concatenation and
the convolution's output: four tensors of the first width, each the size of the input times 32 channels. Here
every convolution (with its BatchNorm and ReLU) runs over chunks of :data:`ROW_CHUNKS`-th of the first spatial
axis (one slice of halo on each side, zero slices at the volume's ends), and:

* a convolution whose input and output have the same width writes its result back into its own input, one chunk
  behind the chunk it computes: chunk ``k``'s input rows are last read by chunk ``k + 1`` (its halo), so they
  are overwritten only after that;
* a decoder step never builds the concatenation: each chunk concatenates its rows of the skip with its rows of
  the up-sampled tensor, up-sampled from the deeper level's rows on the spot (a stride-2 transposed convolution
  maps each deeper slice to two), and writes its result into the skip;
* on the CPU a chunk's BatchNorm is written over the convolution's output chunk (the same ``native_batch_norm``
  the module runs), so a convolution step makes one chunk of fresh memory, not two: with glibc returning freed
  blocks at once (as ``predict`` pins it) every fresh page is a page fault, and this saved a quarter of them
  (BraTS-size slab: 3-7 % of the time in bf16, 13-17 % in float32; see docs/results.md).

So a level keeps one tensor of its width (its skip, which becomes its decoder output) plus chunk-sized
temporaries; the whole pass peaks near one first-level tensor plus the second level's, instead of three to four.
Each output voxel is computed from the same inputs and weights as in the plain pass; the backends' summation
order may differ in the last bit (see ``tests/test_unet.py``).
"""

from __future__ import annotations

import contextvars
import math
from typing import Callable, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from medseg_mem.models.blocks import pad_amounts, pooled

ROW_CHUNKS = 32  # chunks per convolution along the first spatial axis: temporaries ~ 4/32 of a level's tensor
CHUNK_BYTES = 16 * 2**20  # ... but no chunk's output under this: small convolutions cost more than they save
# PyTorch's CPU heuristic sends a float32 3x3x3 convolution with N * C * D * H <= 20480 to its slow fallback instead
# of oneDNN: 3x slower, and other numbers than the whole convolution's (which is above it) in the last bit
ONEDNN_MIN_NCDH = 20480

_FORCED = contextvars.ContextVar("medseg_onednn_forced", default=False)  # see onednn_forced

Rows = Callable[[int, int], torch.Tensor]  # (lo, hi) -> the input's slices lo..hi-1 along the first spatial axis


def lean_forward(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits of :class:`~medseg_mem.models.unet.UNet3D` ``net`` for ``x``, padded to ``net.divisor`` as its
    forward pads them (the caller crops); to be called without autograd.

    Example:
        >>> from medseg_mem.models.unet import UNet3D
        >>> net = UNet3D(1, 2, channels=(4, 8)).eval()
        >>> with torch.no_grad():
        ...     lean_forward(net, torch.zeros(1, 1, 5, 4, 4)).shape
        torch.Size([1, 2, 6, 4, 4])
    """
    padding = pad_amounts(x.shape[2:], net.divisor)
    x = F.pad(x, padding) if any(padding) else x
    skips = []
    for index, encoder in enumerate(net.encoders):
        if index:
            x = mapped_rows(lambda rows: pooled(net.pool, rows), x, stride=2)
        x = conv_rows(encoder[0:3], slices_of(x), x)
        x = conv_rows(encoder[3:6], slices_of(x), x, into=x)
        skips.append(x)
    x = skips.pop()
    for up, decoder in zip(net.ups, net.decoders):
        skip = skips.pop()
        x = conv_rows(decoder[0:3], joined_slices(skip, up, x), skip, into=skip)
        x = conv_rows(decoder[3:6], slices_of(x), x, into=x)
        del skip
    return mapped_rows(lambda rows, depth=x.shape[2]: _convolve(net.head, rows, depth, (0, 0, 0)), x)


def slices_of(x: torch.Tensor) -> Rows:
    """Rows of ``x`` itself."""
    return lambda lo, hi: x.narrow(2, lo, hi - lo)


def joined_slices(skip: torch.Tensor, up: nn.Module, deeper: torch.Tensor) -> Rows:
    """Rows of ``cat([skip, up(deeper)], dim=1)``, made from the deeper level's rows on demand."""

    def rows(lo: int, hi: int) -> torch.Tensor:
        first = lo // 2
        upsampled = up(deeper.narrow(2, first, (hi + 1) // 2 - first))
        return torch.cat([skip.narrow(2, lo, hi - lo), upsampled.narrow(2, lo - 2 * first, hi - lo)], dim=1)

    return rows


def conv_rows(block: nn.Sequential, rows: Rows, like: torch.Tensor, into: Optional[torch.Tensor] = None):
    """``block`` (Conv3d k3 p1, BatchNorm3d, ReLU) over the input given by ``rows``, shaped as ``like`` along the
    spatial axes, chunk by chunk along the first one; the result goes into ``into`` (one chunk behind, so
    ``into`` may be the input itself) or, when that is ``None`` or its dtype differs, a new tensor (each chunk
    written at once: its pages become resident as it fills, as the planner's trace counts them)."""
    depth = like.shape[2]
    step = chunk_rows(like, block[0].out_channels)
    out, pending = into, None
    for start in range(0, depth, step):
        stop = min(start + step, depth)
        y = _convolve(block[0], _with_halo(rows, start, stop, depth), depth, (0, 1, 1))
        y = block[2](_normalise(block[1], y))
        if stop - start == depth:
            return y  # one chunk: nothing to save by writing it anywhere
        if out is None or out.dtype != y.dtype:
            out = _output_for(y, depth)
        if out is not into:
            out.narrow(2, start, y.shape[2]).copy_(y)
            continue
        if pending is not None:
            out.narrow(2, pending[0], pending[1].shape[2]).copy_(pending[1])
        pending = (start, y)
    if pending is not None:
        out.narrow(2, pending[0], pending[1].shape[2]).copy_(pending[1])
    return out


def mapped_rows(function: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """``function`` of ``x``, computed chunk by chunk along the first spatial axis, for a function whose output
    slice ``i`` depends only on input slices ``stride * i .. stride * (i + 1) - 1`` (the head's 1x1x1
    convolution; the stride-2 max-pool). Whole, the head makes oneDNN reorder the first-level tensor (0.6 of its
    bytes at BraTS size) and the max-pool keeps int64 indices of its whole output (twice its input's bytes in
    bf16)."""
    depth = x.shape[2]
    step, out = stride * math.ceil(chunk_rows(x, x.shape[1]) / stride), None
    for start in range(0, depth, step):
        y = function(x.narrow(2, start, min(step, depth - start)))
        if step >= depth:
            return y
        if out is None:
            out = _output_for(y, depth // stride)
        out.narrow(2, start // stride, y.shape[2]).copy_(y)
    return out


def chunk_rows(like: torch.Tensor, channels: int) -> int:
    """Slices per chunk for an output of ``channels`` channels shaped as ``like``: a :data:`ROW_CHUNKS`-th of the
    first spatial axis, or more where that would make chunks of less than :data:`CHUNK_BYTES`; balanced."""
    depth, row_bytes = like.shape[2], like.shape[0] * channels * like.shape[3] * like.shape[4] * like.element_size()
    step = max(math.ceil(depth / ROW_CHUNKS), math.ceil(CHUNK_BYTES / max(row_bytes, 1)))
    return math.ceil(depth / math.ceil(depth / step))  # chunks of equal size, the last no smaller than the others


def _output_for(chunk: torch.Tensor, depth: int) -> torch.Tensor:
    """An empty tensor for ``depth`` slices of outputs like ``chunk`` (its dtype, device, layout and other axes)."""
    shape = (*chunk.shape[:2], depth, *chunk.shape[3:])
    return torch.empty(shape, dtype=chunk.dtype, device=chunk.device, memory_format=_layout(chunk))


def _with_halo(rows: Rows, start: int, stop: int, depth: int) -> torch.Tensor:
    """Input slices ``start - 1 .. stop`` (the convolution's halo), zero slices past the volume's ends."""
    lo, hi = max(start - 1, 0), min(stop + 1, depth)
    chunk = rows(lo, hi)
    border = (1 if start == 0 else 0, 1 if stop == depth else 0)
    return F.pad(chunk, (0, 0, 0, 0, *border)) if any(border) else chunk


def _convolve(conv: nn.Conv3d, x: torch.Tensor, depth: int, padding: Tuple[int, int, int]) -> torch.Tensor:
    """``conv`` of the chunk ``x`` of a ``depth``-slice input, with ``padding`` (none along the first axis: the
    halo is in ``x``). It computes in the weights' dtype unless autocast chooses (the planner's half-dtype ``meta``
    networks stand for autocast), and on oneDNN where PyTorch would have run the whole convolution there but not
    this chunk (:func:`_onednn_for_whole_only`)."""
    autocasting = x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type)
    if autocasting:
        return F.conv3d(x, conv.weight, conv.bias, padding=padding)
    x = x.to(conv.weight.dtype)
    if x.device.type == "meta" and _onednn_for_whole_only(x, conv, depth, "cpu"):
        token = _FORCED.set(True)  # the planner's trace of a CPU pass: this chunk runs on oneDNN there
        try:
            return F.conv3d(x, conv.weight, conv.bias, padding=padding)
        finally:
            _FORCED.reset(token)
    if _onednn_for_whole_only(x, conv, depth):
        x = x.contiguous(memory_format=_layout(conv.weight))
        return torch.mkldnn_convolution(x, conv.weight, conv.bias, padding, (1, 1, 1), (1, 1, 1), 1)
    return F.conv3d(x, conv.weight, conv.bias, padding=padding)


def _normalise(norm: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """``norm`` (a BatchNorm in eval mode) of the chunk ``y``, written over ``y`` on the CPU: the same numbers as
    ``norm(y)`` (one pass of ``native_batch_norm``) without a second chunk of fresh pages. Elsewhere (the planner's
    ``meta`` trace included, which so stays an upper bound), or for another module, ``norm(y)``."""
    batchnorm = isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.running_mean is not None
    if y.device.type != "cpu" or not batchnorm or norm.training:
        return norm(y)
    unused = (y.new_empty(0, dtype=torch.float32), y.new_empty(0, dtype=torch.float32))  # (training only)
    torch.ops.aten.native_batch_norm.out(y, norm.weight, norm.bias, norm.running_mean, norm.running_var, False,
                                         0.0, norm.eps, out=y, save_mean=unused[0], save_invstd=unused[1])  # fmt: skip
    return y


def onednn_forced() -> bool:
    """True while the planner's ``meta`` trace runs a chunk that a CPU pass runs on oneDNN although PyTorch's
    heuristic alone would send it to its slow kernels (:mod:`medseg_mem.memory.backend`: no column buffer)."""
    return _FORCED.get()


def _onednn_for_whole_only(x: torch.Tensor, conv: nn.Conv3d, depth: int, device: Optional[str] = None) -> bool:
    """Whether PyTorch's CPU heuristic (``ConvParams::use_mkldnn``, float32, batch under 16) would run the whole
    convolution with oneDNN but this chunk of it with its slow fallback (:data:`ONEDNN_MIN_NCDH`); ``device``:
    the device to decide for (default: ``x``'s)."""
    if (device or x.device.type) != "cpu" or x.dtype != torch.float32 or not torch.backends.mkldnn.is_available():
        return False
    pointwise_kernel = conv.kernel_size[-1] == 1 and conv.kernel_size[-2] == 1
    if not torch.backends.mkldnn.enabled or (pointwise_kernel and torch.get_num_threads() == 1):
        return False
    per_slice = x.shape[0] * x.shape[1] * x.shape[3]
    return x.shape[0] == 1 and per_slice * x.shape[2] <= ONEDNN_MIN_NCDH < per_slice * depth


def _layout(tensor: torch.Tensor) -> torch.memory_format:
    """``channels_last_3d`` for a channels-last 5D tensor, else contiguous."""
    if tensor.is_contiguous(memory_format=torch.channels_last_3d) and not tensor.is_contiguous():
        return torch.channels_last_3d
    return torch.contiguous_format
