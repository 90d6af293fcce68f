"""What DistributedDataParallel adds to each rank's memory: one training step, one process against two (gloo, CPU).

A random-weight U-Net (channels-last, as ``medseg-mem run`` trains it) takes ``--steps`` training steps through the
training loop's own :func:`medseg_mem.training.step.train_step` (fp32, Dice+CE loss, backward, Adam), the Adam
states created before the first one (:func:`~medseg_mem.training.calibration_step.prime_optimizer`). Each
setting runs three ways, every process spawned afresh with one torch thread (as ``torchrun`` sets
``OMP_NUM_THREADS=1``) and the same per-process batch:

* ``single``: one process, the network unwrapped (``run`` without torchrun);
* ``ddp``: two ranks joined by :func:`medseg_mem.training.distributed.start` (gloo), the network wrapped by
  :func:`medseg_mem.training.distributed.wrap` with ``BUCKET_VIEW = False`` (DDP's default: the reducer's
  gradient buckets are a second copy of the gradients);
* ``ddp+view``: the same with ``BUCKET_VIEW = True`` (``gradient_as_bucket_view``: each ``.grad`` becomes a view
  into its bucket).

Measurement (each process): glibc's allocator pinned as :func:`~medseg_mem.memory.measure.measure_peak` pins it
(:func:`~medseg_mem.memory.rss.pin_glibc_allocator`), ``VmRSS`` taken as the baseline after torch, MONAI and the
process group are up; then the setup (network, DDP wrapper, optimizer, batch) and, for every step, the kernel's
peak counter reset through ``/proc/self/clear_refs`` (:class:`~medseg_mem.memory.rss.PeakTracker`) and ``VmHWM``
read after it. A process's peak is the largest ``VmHWM - baseline`` over the steps: what the setup left resident
plus what a step adds, as ``measure_peak`` counts it, except that the resident part is read from ``VmRSS`` and
not from the live Python tensors, because DDP's buckets are C++ tensors Python's garbage collector never sees.
Also printed: ``measure_peak``'s own reading (live tensors + ``VmHWM`` above ``VmRSS`` after the setup) of each
mode, the peak of every step, and the line ``diff = k * parameter bytes + c`` through the largest difference at
each parameter size, from which :func:`medseg_mem.memory.planner_training.ddp_bytes` takes its constants (its
figures are the ``model`` column).

Usage:
    python benchmarks/bench_ddp_memory.py 2>/dev/null | tee benchmarks/results/ddp_memory_cpu.log   # ~12 min
    python benchmarks/bench_ddp_memory.py --steps 2 --settings "8-128 32^3"
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import socket
import time
from datetime import datetime, timezone

SETTINGS = {
    "8-128 32^3": ((8, 16, 32, 64, 128), (1, 1, 32, 32, 32)),
    "16-256 64^3": ((16, 32, 64, 128, 256), (1, 1, 64, 64, 64)),
    "32-512 32^3": ((32, 64, 128, 256, 512), (1, 1, 32, 32, 32)),
    "32-512 64^3": ((32, 64, 128, 256, 512), (1, 1, 64, 64, 64)),
}
MODES = {"single": (1, False), "ddp": (2, False), "ddp+view": (2, True)}  # processes, gradient_as_bucket_view
CLASSES = 3
MB = 1e6


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def setup_step(channels, shape, bucket_view):
    """One training step of a channels-last U-Net (wrapped by ``distributed.wrap`` under a process group);
    returns ``(step, parameter bytes)``."""
    import torch
    from monai.losses import DiceCELoss

    from medseg_mem.training.calibration_step import prime_optimizer
    from medseg_mem.models.build import channels_last_layout
    from medseg_mem.models.unet import UNet3D
    from medseg_mem.training import distributed
    from medseg_mem.training.step import train_step

    torch.manual_seed(0)
    net = channels_last_layout(UNet3D(shape[1], CLASSES, channels).train())
    optimizer = prime_optimizer(torch.optim.Adam(net.parameters(), lr=3e-4))
    distributed.BUCKET_VIEW = bucket_view
    trained = distributed.wrap(net, torch.device("cpu"))
    image = torch.randn(shape)
    label = torch.randint(0, CLASSES, (shape[0], 1, *shape[2:]), dtype=torch.uint8)
    loss = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    parameter_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
    return (lambda: train_step(trained, optimizer, loss, image, label)), parameter_bytes


def rank_main(rank, world, port, channels, shape, bucket_view, steps, results):
    """One process: baseline, setup, ``steps`` measured steps; puts its reading on ``results``."""
    from medseg_mem.memory import rss

    pinned = rss.pin_glibc_allocator()
    import monai.losses  # noqa: F401 - everything setup_step imports, imported before the baseline
    import torch

    import medseg_mem.training.calibration_step  # noqa: F401
    import medseg_mem.models.build  # noqa: F401
    import medseg_mem.models.unet  # noqa: F401
    import medseg_mem.training.step  # noqa: F401
    from medseg_mem.memory.measure import resident_tensor_bytes
    from medseg_mem.training import distributed

    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port))  # fmt: skip
    distributed.start()
    gc.collect()
    baseline = rss.current_bytes()
    step, parameter_bytes = setup_step(channels, shape, bucket_view)
    gc.collect()
    after_setup, tensors = rss.current_bytes(), resident_tensor_bytes()
    peaks, method = measured_steps(step, steps)
    distributed.stop()
    results.put(dict(rank=rank, peaks=[p - baseline for p in peaks], setup=after_setup - baseline,
                     tensors=tensors + max(peaks) - after_setup, parameters=parameter_bytes,
                     method=method + (rss.PINNED_SUFFIX if pinned else "")))  # fmt: skip


def measured_steps(step, steps):
    """Absolute peak RSS of each of ``steps`` calls of ``step`` (the peak counter reset before each)."""
    from medseg_mem.memory import rss

    peaks, method = [], ""
    for _ in range(steps):
        with rss.PeakTracker() as tracker:
            step()
        peaks.append(tracker.peak_bytes)
        method = tracker.method
    return peaks, method


def run_mode(channels, shape, mode, steps):
    """Every rank's reading for ``mode`` (a key of :data:`MODES`), sorted by rank."""
    import torch.multiprocessing as mp

    world, bucket_view = MODES[mode]
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    port = free_port()
    processes = [context.Process(target=rank_main, args=(r, world, port, channels, shape, bucket_view, steps, results))
                 for r in range(world)]  # fmt: skip
    for process in processes:
        process.start()
    readings = [results.get() for _ in processes]
    for process in processes:
        process.join()
    if any(p.exitcode for p in processes):
        raise RuntimeError(f"{mode}: a rank failed: exit codes {[p.exitcode for p in processes]}")
    return sorted(readings, key=lambda r: r["rank"])


def header(steps):
    import torch

    from medseg_mem.training import distributed

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return [
        f"DDP memory per rank, {date}; device cpu ({cpu}, {os.cpu_count()} cores), torch {torch.__version__}, "
        f"python {platform.python_version()}",
        f"{steps} fp32 training steps (train_step, Adam, Dice+CE, {CLASSES} classes, channels-last), 1 torch thread "
        "per process; 2 ranks: gloo, distributed.start + distributed.wrap",
        "peak = max over the steps of VmHWM (reset by clear_refs before each step) - VmRSS before the setup, "
        "glibc mmap threshold pinned at 1 MiB (as measure_peak); MB = 10^6 bytes; diff = largest rank - single; "
        "model = planner_training.ddp_bytes(params)",
        f"run's setting: distributed.BUCKET_VIEW = {distributed.BUCKET_VIEW} (gradient_as_bucket_view)",
    ]


def row(name, mode, single, ranks):
    """One table line: the mode's per-rank peaks against the single process, the difference, the parameters
    and the planner's model of the difference (:func:`~medseg_mem.memory.planner_training.ddp_bytes`)."""
    from medseg_mem.memory.planner_training import ddp_bytes

    peaks = [max(r["peaks"]) for r in ranks]
    params, diff = ranks[0]["parameters"], max(peaks) - single
    rank1 = f"{peaks[1] / MB:9.1f}" if len(peaks) > 1 else f"{'':>9}"
    return (f"{name:<12} {mode:<9} {single / MB:9.1f} {peaks[0] / MB:9.1f} {rank1} {diff / MB:9.1f} "
            f"{params / MB:9.2f} {diff / params:7.2f} {ddp_bytes(params, len(ranks)) / MB:9.1f}")  # fmt: skip


def steps_line(name, mode, ranks):
    """Each rank's resident bytes after the setup and its peak in every step (MB above the baseline)."""
    parts = [f"rank {r['rank']}: setup {r['setup'] / MB:.1f}, steps " + " ".join(f"{p / MB:.1f}" for p in r["peaks"])
             for r in ranks]  # fmt: skip
    return f"  {name:<12} {mode:<9} " + "; ".join(parts)


def envelope_fit(points):
    """``(k, c)`` of the line ``diff = k * params + c`` through the largest difference at each parameter size
    (least squares when there are more than two sizes)."""
    import numpy as np

    largest = {}
    for params, diff in points:
        largest[params] = max(diff, largest.get(params, diff))
    if len(largest) < 2:
        return None
    k, c = np.polyfit(list(largest), list(largest.values()), 1)
    return float(k), float(c)


def measure_all(names, steps):
    """``{setting: {mode: readings}}``, the table printed as each setting finishes."""
    print(f"{'setting':<12} {'mode':<9} {'single':>9} {'rank 0':>9} {'rank 1':>9} {'diff':>9} {'params':>9} "
          f"{'diff/P':>7} {'model':>9}", flush=True)  # fmt: skip
    results = {}
    for name in names:
        channels, shape = SETTINGS[name]
        results[name] = {mode: run_mode(channels, shape, mode, steps) for mode in MODES}
        single = max(results[name]["single"][0]["peaks"])
        for mode, ranks in results[name].items():
            print(row(name, mode, single, ranks), flush=True)
    return results


def print_details(results) -> None:
    """Per-step peaks, measure_peak's readings, and the fitted overhead of each DDP mode."""
    print("per step (MB above the baseline):")
    for name, modes in results.items():
        print("\n".join(steps_line(name, mode, ranks) for mode, ranks in modes.items()))
    print("measure_peak's reading (live tensors after setup + VmHWM above VmRSS after setup), largest rank, MB:")
    for name, modes in results.items():
        readings = (f"{mode} {max(r['tensors'] for r in ranks) / MB:.1f}" for mode, ranks in modes.items())
        print(f"  {name:<12} " + ", ".join(readings))
    for mode in (m for m in MODES if MODES[m][0] > 1):
        points = [(modes[mode][0]["parameters"], max(max(r["peaks"]) for r in modes[mode])
                   - max(modes["single"][0]["peaks"])) for modes in results.values()]  # fmt: skip
        fit = envelope_fit(points)
        if fit:
            print(f"fit, {mode}: diff = {fit[0]:.4f} x parameter bytes + {fit[1] / MB:.2f} MB "
                  "(through the largest diff at each parameter size)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated keys of SETTINGS")
    args = parser.parse_args()
    start = time.time()
    for line in header(args.steps):
        print(line, flush=True)
    results = measure_all(args.settings.split(","), args.steps)
    print_details(results)
    method = next(iter(results.values()))["single"][0]["method"]
    print(f"method: {method}; done in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
