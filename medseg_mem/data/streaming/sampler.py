"""MONAI's resampling (``affine_grid`` then ``grid_sample``, border padding, ``align_corners=False``) computed for a
range of output slices from a window of input slices: the same float32 operations in the same order, so the
result equals resampling the whole volume bit for bit.

``Spacing`` builds the sampling grid as ``base @ theta.T`` (``base``: each axis' ``linspace(-1, 1, n) * (n - 1) /
n`` and a 1) and samples it with PyTorch's 3D CPU kernel: the normalised coordinate becomes a voxel position
``((g + 1) * size - 1) / 2``, clipped to ``[0, size - 1]`` (border), then either the nearest voxel
(``nearbyint``) or the eight neighbours weighted by products of distances, summed in the kernel's order. Here
the grid rows are those of the requested output slices only, and the eight neighbours are gathered from the
input slices the caller fetched: the interpolation's support (the halo) is found from the grid's corners.

Example:
    >>> image = torch.rand(1, 4, 4, 6)
    >>> theta = grid_theta(np.diag([1.0, 1.0, 0.5, 1.0]), (4, 4, 6), (4, 4, 12))
    >>> part = sample_range(lambda lo, hi: image[..., lo:hi], theta, (4, 4, 6), (4, 4, 12), 3, 7)
    >>> tuple(part.shape)
    (1, 4, 4, 4)
"""

from __future__ import annotations

from typing import Callable, Sequence, Tuple

import numpy as np  # noqa: F401 - the docstring's example uses it
import torch

from medseg_mem.data.streaming.geometry import grid_theta  # noqa: F401 - the docstring's example uses it

CHUNK_VOXELS = 2**18  # output voxels per step: a few MiB of float32 temporaries each
CORNERS = ((0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 1), (1, 1, 1))  # kernel order
Fetch = Callable[[int, int], torch.Tensor]


def base_axis(size: int) -> torch.Tensor:
    """ATen's ``linspace_from_neg_one(size, align_corners=False)``: the normalised centres of ``size`` voxels."""
    if size <= 1:
        return torch.zeros(1)
    return torch.linspace(-1, 1, size) * (size - 1) / size


def grid_rows(theta: torch.Tensor, out_shape: Sequence[int], rows: slice, start: int, stop: int) -> torch.Tensor:
    """``affine_grid``'s normalised coordinates ``(N, 3)`` of output voxels ``[rows, :, start:stop]``: ``base @
    theta.T`` for the base coordinates ``(x, y, z, 1)`` (the last axis first, as ``affine_grid`` orders them)."""
    size_x, size_y, size_z = out_shape
    first_axis, second_axis = base_axis(size_x)[rows], base_axis(size_y)
    base = torch.ones(len(first_axis), size_y, stop - start, 4)
    base[..., 0] = base_axis(size_z)[start:stop]
    base[..., 1] = second_axis[:, None]
    base[..., 2] = first_axis[:, None, None]
    # affine_grid's own product (a batched GEMM): its rounding (fused multiply-adds or not) is the BLAS's, per CPU
    return base.view(1, -1, 4).bmm(theta[:, :3].transpose(1, 2))[0]


def source_position(normalised: torch.Tensor, size: int) -> torch.Tensor:
    """``grid_sample``'s voxel position of a normalised coordinate (``align_corners=False``, border padding)."""
    return (((normalised + 1) * size - 1) / 2).clamp(0, size - 1)


def support(theta: torch.Tensor, in_shape: Sequence[int], out_shape: Sequence[int], start: int, stop: int) -> Tuple[
        int, int]:  # fmt: skip
    """Input slices ``[lo, hi)`` of the last axis that output slices ``[start, stop)`` read (halo included).

    The grid is affine in the output index, so its extremes lie on the first and last rows of the block (the
    corners among them); one slice of margin on each side absorbs the rounding of the rows in between.
    """
    edges = [grid_rows(theta, out_shape, slice(x, x + 1), start, stop)[:, 0] for x in (0, out_shape[0] - 1)]
    position = source_position(torch.cat(edges), in_shape[2])
    depth = in_shape[2]
    return max(0, int(position.min().floor()) - 1), min(depth, int(position.max().floor()) + 3)


def sample_range(fetch: Fetch, theta: torch.Tensor, in_shape: Sequence[int], out_shape: Sequence[int], start: int,
                 stop: int, mode: str = "bilinear") -> torch.Tensor:  # fmt: skip
    """Output slices ``[start, stop)`` of the last axis of MONAI's resampling, ``(C, X, Y, stop - start)`` float32.

    Args:
        fetch: ``fetch(lo, hi)`` returns input slices ``[lo, hi)`` ``(C, X, Y, hi - lo)`` as float32.
        theta: the normalised ``theta`` (:meth:`~medseg_mem.data.streaming.geometry.Resampling.theta`).
        in_shape: the input's spatial shape.
        out_shape: the output's spatial shape.
        start: first output slice.
        stop: one past the last output slice.
        mode: ``"bilinear"`` (trilinear, images and probabilities) or ``"nearest"`` (labels).
    """
    lo, hi = support(theta, in_shape, out_shape, start, stop)
    window = fetch(lo, hi).float().contiguous()
    flat = window.reshape(window.shape[0], -1)
    rows_per_chunk = max(1, CHUNK_VOXELS // max(1, out_shape[1] * (stop - start)))
    parts = []
    for row in range(0, out_shape[0], rows_per_chunk):
        grid = grid_rows(theta, out_shape, slice(row, row + rows_per_chunk), start, stop)
        position = [source_position(grid[:, 2 - axis], in_shape[axis]) for axis in range(3)]
        sampler = _nearest if mode == "nearest" else _linear
        parts.append(sampler(flat, position, in_shape, lo, hi))
    out = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
    return out.view(window.shape[0], out_shape[0], out_shape[1], stop - start)


def _nearest(flat: torch.Tensor, position, shape, lo: int, hi: int) -> torch.Tensor:
    x, y, z = (p.round().long() for p in position)  # round half to even, as nearbyint
    return flat.index_select(1, (x * shape[1] + y) * (hi - lo) + (z - lo).clamp(0, hi - lo - 1))


def _linear(flat: torch.Tensor, position, shape, lo: int, hi: int) -> torch.Tensor:
    """The kernel's trilinear sum: eight neighbours, weights ``(w_z * w_y) * w_x``, added in its order.

    Border padding clips a position to ``size - 1``, so the upper neighbour outside the volume always has weight
    0; its index is clamped into the window and it adds ``value * 0``, as the kernel adds nothing.
    """
    low = [p.floor() for p in position]
    terms = [((l + 1) - p, p - l) for p, l in zip(position, low)]  # (weight of the lower, of the upper neighbour)
    first = [l.long() for l in low]
    strides = (shape[1] * (hi - lo), hi - lo, 1)
    starts = (0, 0, lo)
    offsets = [((f - start).clamp(0, stop - 1) * stride, (f + 1 - start).clamp(0, stop - 1) * stride)
               for f, start, stop, stride in zip(first, starts, (shape[0], shape[1], hi - lo), strides)]  # fmt: skip
    plane_weight = {(w, h): terms[2][w] * terms[1][h] for w in (0, 1) for h in (0, 1)}  # (w_z * w_y), reused
    row_offset = {(d, h): offsets[0][d] + offsets[1][h] for d in (0, 1) for h in (0, 1)}
    out = torch.zeros(flat.shape[0], position[0].numel())
    for w, h, d in CORNERS:  # offsets along (z, y, x), the kernel's (W, H, D)
        out += flat.index_select(1, row_offset[d, h] + offsets[2][w]) * (plane_weight[w, h] * terms[0][d])
    return out
