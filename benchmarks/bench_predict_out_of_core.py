"""``medseg-mem predict`` out of core against in memory, with trained runs, on synthetic CT scans up to 512x512x2000.

A ``patch`` and a ``cascade`` run of the embedded default (widths 8-128) are trained for a few steps in a work
folder; the calibration cache lives there too (``MEDSEG_MEM_CACHE``), filled by one ``plan`` first so that no
measured ``predict`` calibrates. The scans are ``bench_streaming.write_ct``'s (int16, LPS-stored, so orientation
flips two axes), written slab by slab as ``.nii`` and ``.nii.gz``. Each (scan, variant, path) is one
``medseg-mem predict --device cpu --quiet --out-of-core always|never`` process. Its peak is the whole process's
(interpreter, torch, MONAI, nibabel, data) as ``predict`` itself prints it, checked against this script's own
samples of the process's ``VmRSS`` every 0.25 s. GNU ``/usr/bin/time -v``'s "Maximum resident set size" is printed
beside them but is not the peak: ``predict`` resets the kernel's high-water mark (``clear_refs``) to measure what
its inference adds, and the maximum the kernel reports at exit is the high-water mark since the last reset.
Time per voxel is ``predict``'s own seconds (from opening the run to the last renamed label map; imports excluded)
over the scan's voxels.

Usage::

    python benchmarks/bench_predict_out_of_core.py --work /tmp/ooc --log benchmarks/results/predict_out_of_core_cpu.log
    python benchmarks/bench_predict_out_of_core.py --jobs 300:nii:patch:always,300:nii:patch:never
"""

from __future__ import annotations

import argparse
import os
import re
import signal
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
SAMPLE_S = 0.25


def cli(work: Path, *args: str) -> str:
    """``medseg-mem`` in a fresh process in ``work``; its output."""
    env = {**os.environ, "MEDSEG_MEM_CACHE": str(work / "cache")}
    done = subprocess.run([sys.executable, "-m", "medseg_mem", *args], cwd=work, capture_output=True, text=True,
                          env=env)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"medseg-mem {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return done.stdout + done.stderr


def timed(work: Path, args, limit: float):
    """``medseg-mem ARGS`` under GNU ``time -v``, interrupted (SIGINT) after ``limit`` seconds; its output, whether it
    was interrupted, and ``(seconds, VmRSS)`` of the python process sampled every :data:`SAMPLE_S` s."""
    env = {**os.environ, "MEDSEG_MEM_CACHE": str(work / "cache")}
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "medseg_mem", *args]
    process = subprocess.Popen(command, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               preexec_fn=_interruptible)  # fmt: skip
    start, samples, child, stopped = time.perf_counter(), [], None, False
    while process.poll() is None:
        time.sleep(SAMPLE_S)
        child = child or _child(process.pid)
        elapsed = time.perf_counter() - start
        if child:
            samples.append((elapsed, _rss(child)))
        if child and elapsed > limit and not stopped:
            os.kill(child, signal.SIGINT)  # predict aborts: nothing is written
            stopped = True
    return process.stdout.read(), stopped, samples


def _interruptible() -> None:
    """A job started in the background (``nohup ... &``) inherits SIGINT ignored, and Python keeps it so: restore it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _child(pid: int):
    try:
        found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(found[0]) if found else None


def _rss(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    found = re.search(r"VmRSS:\s+(\d+) kB", status)  # none once the process has exited
    return int(found.group(1)) * 1024 if found else 0


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


def measure(work: Path, run: Path, path: Path, mode: str, limit: float) -> dict:
    out = work / f"out-{run.name.split('-')[-2]}-{mode}-{path.name.replace('.', '_')}"  # one per job (a lock each)
    output, stopped, samples = timed(work, ["predict", "--checkpoint", str(run), str(path), "--out", str(out),
                                            "--overwrite", "--quiet", "--device", "cpu", "--out-of-core", mode], limit)
    maxrss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", output).group(1)) * 1024
    summary = re.search(r"on cpu .*?, ([\d.]+) s; peak resident memory of the process ([\d.]+ \w+)(, planned "
                        r"([\d.]+ \w+))?", output)  # fmt: skip
    if summary is None and not stopped:
        raise SystemExit(f"predict failed:\n{output[-3000:]}")
    found = dict(maxrss=maxrss, stopped=stopped, samples=samples, written=sorted(p.name for p in out.glob("*")))
    if summary:
        found.update(seconds=float(summary.group(1)), process=size(summary.group(2)),
                     planned=size(summary.group(4)) if summary.group(4) else 0)  # fmt: skip
    return found


def planned(work: Path, run: Path, scan_path: Path, depth: int, out_of_core: bool) -> int:
    """The planner's whole-process figure for ``predict`` on 1x512x512xdepth with the work folder's calibration (in
    memory: the larger of the inference and loading ``scan_path`` whole, as predict's guard plans it)."""
    os.environ["MEDSEG_MEM_CACHE"] = str(work / "cache")
    from medseg_mem.core.config import InferenceConfig
    from medseg_mem.memory.calibration import cached_calibration
    from medseg_mem.memory.planner import plan_variant
    from medseg_mem.predict.guard import whole_scan_bytes
    from medseg_mem.variants.trained_run import open_trained_run

    trained = open_trained_run(run)
    calibration = cached_calibration(None, "cpu", allow_measuring=False, channels_last=True)
    return plan_variant(trained.variant, (1, 512, 512, depth), trained.num_classes, trained.model,
                        calibration=calibration, inference=InferenceConfig(), input_on_disk=True,
                        out_of_core=out_of_core, preprocessing=whole_scan_bytes(trained, [scan_path])).process_bytes


def describe(job: str, found: dict, plan: int) -> str:
    depth, suffix, variant, mode = job.split(":")
    voxels = 512 * 512 * int(depth)
    sampled_at, sampled = max(found["samples"], key=lambda sample: sample[1]) if found["samples"] else (0.0, 0)
    peak = max(found.get("process", 0), sampled)  # predict's own figure; the samples where it printed none
    error = (plan - peak) / peak
    minutes = ", ".join(f"{t:.0f}s {rss / 2**30:.3f}" for t, rss in found["samples"][::int(60 / SAMPLE_S)])
    if found["stopped"]:
        left = found["written"] or "nothing"
        end = (f"INTERRUPTED after {found['samples'][-1][0]:.0f} s (SIGINT; left in --out: {left})"
               if found["samples"] else "INTERRUPTED")  # fmt: skip
    else:
        end = f"{found['seconds']:.1f} s, {found['seconds'] / voxels * 1e9:.0f} ns/voxel (predict's own seconds)"
    own = f"{found['process'] / 2**30:.3f} GiB" if found.get("process") else "none printed"
    return (f"512x512x{depth} .{suffix:6} {variant:8} --out-of-core {mode:6}: peak {peak / 2**30:.3f} GiB (predict's "
            f"own {own}, sampled VmRSS {sampled / 2**30:.3f} GiB at {sampled_at:.0f} s; GNU time "
            f"{found['maxrss'] / 2**30:.3f} GiB, since the last reset), planned {plan / 2**30:.3f} GiB ({error:+.1%}); "
            f"{end}; RSS GiB every 60 s: {minutes}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-ooc"))
    parser.add_argument("--jobs", default=",".join(DEFAULT_JOBS), help="depth:suffix:variant:mode,...")
    parser.add_argument("--log", type=Path)
    parser.add_argument("--limit", type=float, default=1e9, help="interrupt each predict after this many seconds")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    runs = trained_runs(args.work)
    import torch

    lines = [f"bench_predict_out_of_core {time.strftime('%Y-%m-%d %H:%M')} torch {torch.__version__} cpu, "
             f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the start; widths {WIDTHS}; "
             "peak = the whole predict process: its own figure or VmRSS sampled every 0.25 s, the larger"]  # fmt: skip
    print(lines[0], flush=True)
    for job in args.jobs.split(","):
        depth, suffix, variant, mode = job.split(":")
        path = scan(args.work, int(depth), suffix)
        found = measure(args.work, runs[variant], path, mode, args.limit)
        line = describe(job, found, planned(args.work, runs[variant], path, int(depth), mode == "always"))
        line += f"; load average {os.getloadavg()[0]:.2f} at its end"
        print(line, flush=True)
        lines.append(line)
    if args.log:
        args.log.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
