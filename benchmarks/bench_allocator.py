"""Allocator benchmark: what glibc's allocator settings cost the U-Net's inference pass in time and memory (CPU).

One BraTS-size slab (4x240x240x16), the spec U-Net with random weights, channels-last, under
``torch.inference_mode()``, run the way ``SlabInferer(output="labels")`` runs it: one warm-up pass over the 10 slabs
of a 4x240x240x160 image, then two measured passes. Each allocator setting runs in its own fresh process (glibc
reads its tunables at start, and ``mallopt`` must come before the first tensor):

* ``pinned``: blocks of 1 MiB and more served by ``mmap`` and given back at once, as ``measure_peak`` and
  ``predict`` pin it (``pin_glibc_allocator``);
* ``pinned+hugetlb``: the same, with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (transparent huge pages for those
  blocks; needs ``/sys/kernel/mm/transparent_hugepage/enabled`` at ``always`` or ``madvise``);
* ``default``: glibc untouched (its mmap threshold floats up to 32 MiB as blocks are freed);
* ``kept``: ``mmap`` only from 32 MiB and trim from 256 MiB, so freed memory is kept for reuse.

Printed per setting and precision: the median seconds per network call, the median minor page faults per call
(``getrusage``), and the process peak: ``VmRSS`` after the warm-up plus the ``VmHWM`` rise over the measured
passes.

Usage:
    python benchmarks/bench_allocator.py --precisions bf16,fp32
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

SETTINGS = ("pinned", "pinned+hugetlb", "default", "kept")
SHAPE, CLASSES, SLAB = (4, 240, 240, 160), 4, 16


def configure(setting: str) -> None:
    """Set glibc's thresholds for ``setting`` (the hugetlb tunable is set by the parent, in the environment)."""
    from medseg_mem.memory.rss import pin_glibc_allocator

    if setting.startswith("pinned"):
        pin_glibc_allocator()
    elif setting == "kept":
        pin_glibc_allocator(32 << 20, trim_threshold=256 << 20)


def measure(setting: str, precision: str) -> str:
    """One line of figures for ``setting`` at ``precision``, measured in this process."""
    configure(setting)
    import resource

    import torch

    from medseg_mem.core.precision import half_convolutions, with_precision
    from medseg_mem.inference import SlabInferer
    from medseg_mem.memory import rss
    from medseg_mem.models.build import channels_last_layout
    from medseg_mem.models.unet import UNet3D

    torch.manual_seed(0)
    net = half_convolutions(channels_last_layout(UNet3D(SHAPE[0], CLASSES, (32, 64, 128, 256, 512)).eval()), precision)
    network, image = with_precision(net, precision), torch.randn((1, *SHAPE))
    seconds, faults = [], []

    def timed(x):
        before, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        y = network(x)
        seconds.append(time.perf_counter() - start)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        return y

    inferer = SlabInferer(slab_size=SLAB, output="labels")
    with torch.inference_mode():
        inferer(image, timed)
        del seconds[:], faults[:]
        base = rss.status_bytes("VmRSS")
        rss.CLEAR_REFS.write_text("5")
        for _ in range(2):
            inferer(image, timed)
        peak = rss.status_bytes("VmHWM")
    return (f"{setting:15} {precision}: {statistics.median(seconds):.3f} s per call, "
            f"{statistics.median(faults):,.0f} faults per call, peak {peak / 2**20:.0f} MiB "
            f"(after warm-up {base / 2**20:.0f} MiB)")  # fmt: skip


def run_fresh(setting: str, precision: str) -> str:
    """:func:`measure` in a fresh Python process with ``setting``'s environment."""
    env = dict(os.environ)
    if setting == "pinned+hugetlb":
        env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES"), "glibc.malloc.hugetlb=1"]))
    command = [sys.executable, __file__, "--one", setting, "--precisions", precision]
    return subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout.strip()


def _thp() -> str:
    """The kernel's transparent-huge-page mode (the bracketed word), or ``unknown``."""
    try:
        text = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return "unknown"
    return text.split("[")[1].split("]")[0] if "[" in text else text.strip()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--precisions", default="bf16,fp32", help="comma-separated: fp32, bf16, fp16")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated subset of {SETTINGS}")
    parser.add_argument("--one", choices=SETTINGS, help=argparse.SUPPRESS)  # the child process's setting
    args = parser.parse_args(argv)
    unknown = [s for s in args.settings.split(",") if s not in SETTINGS]
    if unknown:
        parser.error(f"--settings must name settings from {', '.join(SETTINGS)}; got {', '.join(unknown)}")
    if args.one:
        print(measure(args.one, args.precisions))
        return
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; slab {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]}x"
          f"{SLAB} of {SHAPE}, spec U-Net, channels-last, labels output; transparent huge pages: {_thp()}",
          flush=True)  # fmt: skip
    for precision in args.precisions.split(","):
        for setting in args.settings.split(","):
            print(run_fresh(setting, precision), flush=True)


if __name__ == "__main__":
    main()
