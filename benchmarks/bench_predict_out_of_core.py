"""``medseg-mem predict`` out of core against in memory, with trained runs, on synthetic CT scans up to 512x512x2000.

A ``patch`` and a ``cascade`` run of the embedded default (widths 8-128) are trained for a few steps in a work
folder; the calibration cache lives there too (``MEDSEG_MEM_CACHE``), filled by one ``plan`` first so that no
measured ``predict`` calibrates. The scans are ``bench_streaming.write_ct``'s (int16, LPS-stored, so orientation
flips two axes), written slab by slab as ``.nii`` and ``.nii.gz``. Each (scan, variant, path) is one
``medseg-mem predict --device cpu --quiet --out-of-core always|never`` process under GNU ``/usr/bin/time -v``:
its "Maximum resident set size" is the whole process (interpreter, torch, MONAI, nibabel, data), beside what
``predict`` itself prints (its own whole-process peak and the plan). Time per voxel is ``predict``'s own seconds
(from opening the run to the last renamed label map; imports excluded) over the scan's voxels.

Usage::

    python benchmarks/bench_predict_out_of_core.py --work /tmp/ooc --log benchmarks/results/predict_out_of_core_cpu.log
    python benchmarks/bench_predict_out_of_core.py --jobs 300:nii:patch:always,300:nii:patch:never
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_streaming import write_ct  # noqa: E402

UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
DEFAULT_JOBS = ("300:nii:patch:never", "300:nii:patch:always", "2000:nii:patch:always", "2000:nii.gz:patch:always",
                "300:nii.gz:patch:always", "2000:nii:cascade:always", "300:nii:cascade:always")  # fmt: skip
WIDTHS = "8,16,32,64,128"


def cli(work: Path, *args: str, timed: bool = False) -> str:
    """``medseg-mem`` in a fresh process in ``work`` (under GNU time when ``timed``); its output."""
    command = [sys.executable, "-m", "medseg_mem", *args]
    command = ["/usr/bin/time", "-v", *command] if timed else command
    env = {**os.environ, "MEDSEG_MEM_CACHE": str(work / "cache")}
    done = subprocess.run(command, cwd=work, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"medseg-mem {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return done.stdout + done.stderr


def trained_runs(work: Path) -> dict:
    """``{variant: run folder}``: patch and cascade runs of the embedded default, widths 8-128, trained briefly."""
    runs = work / "medseg-work" / "runs"
    if not runs.is_dir():
        cli(work, "prepare")
        cli(work, "run", "--variant", "patch", "--variant", "cascade", "--steps", "20", "--val-every", "20",
            "--channels", WIDTHS, "--quiet")  # fmt: skip
        cli(work, "plan", "--shape", "1,64,64,64", "--classes", "3")  # calibrates once, into work/cache
    found = {}
    for folder in sorted(runs.iterdir(), reverse=True):
        variant = __import__("json").loads((folder / "run.json").read_text())["variant"]
        found.setdefault(variant, folder)
    return found


def scan(work: Path, depth: int, suffix: str) -> Path:
    path = work / f"ct_512x512x{depth}.{suffix}"
    return path if path.exists() else write_ct(path, (512, 512, depth))


def size(text: str) -> int:
    value, unit = text.split()
    return int(float(value) * UNITS[unit])


def measure(work: Path, run: Path, path: Path, mode: str) -> dict:
    out = work / f"out-{mode}"
    output = cli(work, "predict", "--checkpoint", str(run), str(path), "--out", str(out), "--overwrite", "--quiet",
                 "--device", "cpu", "--out-of-core", mode, timed=True)  # fmt: skip
    summary = re.search(r"on cpu .*?, ([\d.]+) s; peak resident memory of the process ([\d.]+ \w+)(, planned "
                        r"([\d.]+ \w+))?", output)  # fmt: skip
    maxrss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", output).group(1)) * 1024
    planned = size(summary.group(4)) if summary.group(4) else 0
    return dict(seconds=float(summary.group(1)), process=size(summary.group(2)), planned=planned, maxrss=maxrss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-ooc"))
    parser.add_argument("--jobs", default=",".join(DEFAULT_JOBS), help="depth:suffix:variant:mode,...")
    parser.add_argument("--log", type=Path)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    runs = trained_runs(args.work)
    import torch

    lines = [f"bench_predict_out_of_core {time.strftime('%Y-%m-%d %H:%M')} torch {torch.__version__} cpu, "
             f"{os.cpu_count()} cores (shared with other jobs: timings under load); widths {WIDTHS}; "
             "peak = GNU time max RSS of the whole predict process"]  # fmt: skip
    print(lines[0], flush=True)
    for job in args.jobs.split(","):
        depth, suffix, variant, mode = job.split(":")
        path = scan(args.work, int(depth), suffix)
        found = measure(args.work, runs[variant], path, mode)
        voxels = 512 * 512 * int(depth)
        error = (found["planned"] - found["maxrss"]) / found["maxrss"] if found["planned"] else float("nan")
        line = (f"512x512x{depth} .{suffix:6} {variant:8} out-of-core {mode:6}: max RSS {found['maxrss'] / 2**30:.3f} "
                f"GiB (predict says {found['process'] / 2**30:.3f} GiB), planned {found['planned'] / 2**30:.3f} GiB "
                f"({error:+.1%}), {found['seconds']:.1f} s, {found['seconds'] / voxels * 1e9:.1f} ns/voxel")  # fmt: skip
        print(line, flush=True)
        lines.append(line)
    if args.log:
        args.log.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
