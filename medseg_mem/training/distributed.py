"""Multi-process training under ``torchrun``: detect it, join the process group, wrap the network.

``torchrun --nproc_per_node N -m medseg_mem run ...`` starts N copies of the command with ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK`` set; :func:`start` then joins them (NCCL for CUDA tensors, gloo for CPU ones).
Without those variables (or with ``WORLD_SIZE=1``) every function here is a no-op and a run is exactly a
single-process run. Each rank trains on its own share of the samples
(:class:`~medseg_mem.training.sampling.StepSamples`), gradients are averaged by
:class:`~torch.nn.parallel.DistributedDataParallel`, and only rank 0 (:func:`is_main`) validates, writes
checkpoints, ``run.json`` and the results CSV, evaluates, measures memory and shows progress.

BatchNorm: on CUDA the network's BatchNorms become :class:`~torch.nn.SyncBatchNorm` (statistics over the global
batch). PyTorch's SyncBatchNorm refuses CPU tensors, so on CPU (gloo) each rank normalises with its own batch's
statistics and the running statistics are averaged over the ranks (:func:`average_buffers`) before every
validation: the running mean is an exponential average, linear in the batch means, so the averaged value is the
one a rank seeing every rank's batch means would hold; every rank then holds the same weights and buffers.
"""

from __future__ import annotations

import inspect
import os
from datetime import timedelta
from typing import Any, List

import torch
import torch.distributed as dist
from torch import nn


WAIT = timedelta(hours=4)
"""How long a rank waits for the others: the other ranks wait at a barrier while rank 0 validates, and (``run``
with several variants, or at the end) while it evaluates on the test split and measures memory."""

BUCKET_VIEW = True
"""DDP's ``gradient_as_bucket_view``: each ``.grad`` is a view into the reducer's gradient bucket instead of a
second copy of it; the same values. Measured per rank of 2 CPU processes (``benchmarks/bench_ddp_memory.py``):
62 MB (0.68x the parameter bytes) less for the spec U-Net at 1x32^3, where a step's peak comes after the backward
pass with every gradient alive; the same peak where it is in the backward pass (1x64^3: the buckets are resident
then, the single process's gradients not yet)."""


def world_size() -> int:
    """How many processes train together (1 outside torchrun)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 outside torchrun)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True for the process that writes files, evaluates and prints (rank 0, or the only process)."""
    return rank() == 0


def launched() -> bool:
    """True when started by torchrun (or any launcher setting its variables) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def start() -> bool:
    """Join the process group when :func:`launched` (once); return whether this process is in one."""
    if not launched() or not dist.is_available():
        return False
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend, timeout=WAIT)
    return True


def stop(clean: bool = True) -> None:
    """Leave the process group: after a barrier (so no rank leaves while another still talks to it) when
    ``clean``, at once after a failure (the other ranks may never reach the barrier)."""
    if dist.is_available() and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def local_device(device: torch.device) -> torch.device:
    """``device``, with a CUDA device narrowed to this process's GPU (``LOCAL_RANK``) under torchrun."""
    if world_size() > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def from_main(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (e.g. the run ids rank 0 drew); ``value`` itself in one process."""
    if world_size() == 1:
        return value
    box: List[Any] = [value]
    dist.broadcast_object_list(box, src=0, device=torch.device("cpu"))
    return box[0]


def sync_norms(net: nn.Module, device: torch.device) -> nn.Module:
    """``net`` with SyncBatchNorm on CUDA under torchrun (same parameter objects); unchanged otherwise."""
    if world_size() > 1 and device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(net)
    return net


def wrap(net: nn.Module, device: torch.device) -> nn.Module:
    """``net`` in :class:`~torch.nn.parallel.DistributedDataParallel` under torchrun, else ``net`` itself.

    Buffers are not broadcast at each forward (``broadcast_buffers=False``): each rank keeps its own running
    statistics, averaged by :func:`average_buffers` (see the module docstring). Gradients are views into DDP's
    buckets (:data:`BUCKET_VIEW`).
    """
    if world_size() == 1:
        return net
    ids = [device.index] if device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel
    # newer PyTorch names the option forward_sync_buffers (the buffers are equal at the start either way)
    newer = "forward_sync_buffers" in inspect.signature(ddp).parameters
    option = "forward_sync_buffers" if newer else "broadcast_buffers"
    return ddp(net, device_ids=ids, gradient_as_bucket_view=BUCKET_VIEW, **{option: False})


def unwrapped(net: nn.Module) -> nn.Module:
    """The network inside a DDP wrapper (what checkpoints store and validation runs)."""
    return net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net


def average_buffers(net: nn.Module) -> None:
    """Average the floating-point buffers (BatchNorm running statistics) over the ranks, in place."""
    module = unwrapped(net)
    if world_size() == 1 or any(isinstance(m, nn.SyncBatchNorm) for m in module.modules()):
        return  # SyncBatchNorm's running statistics are the same on every rank already
    for buffer in module.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer.div_(world_size())


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar tensor over the ranks (the global batch's loss); ``value`` in one process."""
    if world_size() == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / world_size()
