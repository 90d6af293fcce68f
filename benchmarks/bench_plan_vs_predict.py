"""Planner against the user's own ``medseg-mem predict`` and ``run`` processes, from the embedded default's 32x32x96
to liver size, inference and training, on shapes and widths the calibration never saw.

Calibration: the benchmark starts with an empty calibration cache (``MEDSEG_MEM_CACHE`` in a temporary folder),
times the first ``plan`` in a fresh folder (which measures this machine's calibration, once) and a second ``plan``
in another folder (which must reuse it). The calibration is fitted on U-Nets of widths 8-128; no row is.

Inference: for each width list, one run of every variant is trained for one step (the weights do not change the
memory); for each scan shape a random float32 NIfTI scan is written (the small grid uses a case of the embedded
default itself; the deep rows, patch and cascade on 1x512x512x300, an int16 CT-like scan stored LPS, where loading
and preprocessing the scan whole is the peak). Every (widths, shape, variant) is segmented by ``medseg-mem predict``
in its own process, exactly as a user runs it (CPU), which prints the peak resident memory of its whole process, its
plan, and what its inference added; GNU ``time``'s maximum resident set is printed beside it (the peak since predict
last reset the kernel's high-water mark, not the whole run's). The benchmark also plans the prediction itself with
``plan_variant`` (``predict``'s defaults, ``input_on_disk``, the scan's whole-scan preprocessing as predict's guard
plans it) and the cached calibration.

Training: ``run --variant all --steps 2 --val-every 1`` on prepared datasets (the embedded default at two width
lists, a larger rods task, a 4-channel BraTS-like task at the spec widths); each run files, per variant, the
whole process's measured training and evaluation peaks beside their plans (``train_process_peak_bytes``,
``train_planned_process_bytes``, ``process_peak_bytes``, ``planned_process_bytes``).

Goal (issue 24): the whole process's plan within 15 % above and never more than 5 % below the measured peak on
every row, both modes. The increments (what the work added to the process) are reported beside, not judged.

Usage:
    python benchmarks/bench_plan_vs_predict.py [--out benchmarks/results/plan_vs_predict_cpu.csv] [--quick]

``--quick``: the small grid, the deep rows and the embedded default's training only.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_streaming's write_ct

SMALL = ((4, 8, 16, 32, 64, 128), (8, 16, 32, 64, 128))  # on the embedded default's own 1x32x32x96 case
WIDTHS = ((12, 24, 48, 96, 192), (16, 32, 64), (16, 32, 64, 128, 256))
SHAPES = ((1, 200, 176, 72), (1, 320, 320, 64), (1, 160, 192, 112))
LIVER = ((32, 64, 128, 256, 512), (1, 512, 512, 48))
DEEP = ((8, 16, 32, 64, 128), (1, 512, 512, 300), ("patch", "cascade"))  # an int16 CT stored LPS: loading it is the peak
TRAINING = (  # (name, prepare options, run options)
    ("embedded 8-128", (), ()),
    ("embedded 4-128", (), ("--channels", "4,8,16,32,64,128")),
    ("rods 64x64x160 16-256", ("--synthetic", "rods", "--cases", "6", "--shape", "64,64,160"),
     ("--channels", "16,32,64,128,256")),
    ("brats-like 4x96x96x64 32-512", ("--synthetic", "brats-like", "--cases", "5", "--shape", "96,96,64"),
     ("--channels", "32,64,128,256,512")),
)  # fmt: skip
VARIANTS = ("full", "patch", "cascade")
UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
LOW, HIGH = -0.05, 0.15


def cli(*args: str, cwd: Path) -> str:
    """Run ``medseg-mem`` in a fresh process (under GNU time); return its output, stop on failure."""
    command = ["/usr/bin/time", "-f", "maxrss_kb=%M", sys.executable, "-m", "medseg_mem", *args]
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"medseg-mem {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr


def size(text: str) -> float:
    """``607 MiB`` -> bytes."""
    value, unit = text.split()
    return float(value) * UNITS[unit]


def timed_plans(work: Path) -> dict:
    """Seconds of the first ``plan`` in a fresh folder (it calibrates) and of a second one in another folder."""
    seconds = {}
    for name in ("first", "second"):
        folder = work / f"folder-{name}"
        folder.mkdir()
        start = time.perf_counter()
        output = cli("plan", "--shape", "1,64,64,64", "--classes", "3", cwd=folder)
        seconds[name] = round(time.perf_counter() - start, 1)
        seconds[f"{name}_calibrated"] = "calibrating the planner" in output
    print(f"plan in a fresh folder: {seconds['first']} s (calibrated: {seconds['first_calibrated']}); in a second "
          f"folder: {seconds['second']} s (calibrated: {seconds['second_calibrated']})", flush=True)  # fmt: skip
    return seconds


def runs_with_widths(work: Path, widths) -> dict:
    """The newest run per variant whose checkpoints have ``widths``."""
    from medseg_mem.variants.trained_run import open_trained_run

    found = {}
    for folder in sorted((work / "medseg-work" / "runs").iterdir(), reverse=True):
        trained = open_trained_run(folder)
        if tuple(trained.model.channels) == tuple(widths) and trained.variant not in found:
            found[trained.variant] = (folder, trained)
    return found


def write_scan(path: Path, shape) -> Path:
    """A random float32 scan of spatial ``shape[1:]`` with an identity (RAS) affine."""
    import nibabel as nib
    import numpy as np

    data = np.random.default_rng(0).normal(100, 20, size=shape[1:]).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


def measured(work: Path, run: Path, scan: Path):
    """``(process peak, its plan, inference added, GNU time max RSS, seconds)`` of one ``medseg-mem predict``."""
    start = time.perf_counter()
    output = cli("predict", "--checkpoint", str(run), str(scan), "--out", str(work / "out"), "--overwrite",
                 "--quiet", cwd=work)  # fmt: skip
    seconds = time.perf_counter() - start
    found = re.search(r"peak resident memory of the process ([\d.]+ \w+), planned ([\d.]+ \w+) \(the inference "
                      r"added ([\d.]+ \w+)\)", output)  # fmt: skip
    rss = int(re.search(r"maxrss_kb=(\d+)", output).group(1)) * 1024
    return size(found.group(1)), size(found.group(2)), size(found.group(3)), rss, seconds


def planned(trained, shape, scan: Path):
    """The planner's figures (whole process, and what the inference adds) for ``predict`` on ``scan`` of ``shape``."""
    from medseg_mem.core.config import InferenceConfig
    from medseg_mem.memory.calibration import cached_calibration
    from medseg_mem.memory.planner import plan_variant
    from medseg_mem.predict.guard import whole_scan_bytes

    calibration = cached_calibration(None, "cpu", allow_measuring=False, channels_last=True)
    plan = plan_variant(trained.variant, shape, trained.num_classes, trained.model, calibration=calibration,
                        inference=InferenceConfig(), input_on_disk=True,
                        preprocessing=whole_scan_bytes(trained, [scan]))  # fmt: skip
    return plan.process_bytes, plan.predicted_bytes


def verdict(error: float) -> str:
    return "ok" if LOW <= error <= HIGH else "MISS"


def inference_rows(work: Path, grid) -> list:
    """Train the runs of each width list once, predict every (shape, variant) and compare."""
    rows, trained_widths = [], set()
    for widths, shapes, variants in grid:
        if widths not in trained_widths:
            cli("run", "--variant", "all", "--steps", "1", "--val-every", "1", "--channels",
                ",".join(map(str, widths)), "--quiet", cwd=work)  # fmt: skip
            trained_widths.add(widths)
        runs = runs_with_widths(work, widths)
        for shape in shapes:
            scan = scan_for(work, shape)
            for variant in variants:
                run, trained = runs[variant]
                process, its_plan, added, rss, seconds = measured(work, run, scan)
                plan, plan_added = planned(trained, shape, scan)
                rows.append(row("inference", widths, shape, variant, process, plan, added, plan_added, rss, seconds))
                rows[-1]["predict_planned_bytes"] = int(its_plan)
    return rows


def scan_for(work: Path, shape) -> Path:
    """The embedded default's first case for its own shape, else a random scan of ``shape``."""
    if tuple(shape) == (1, 32, 32, 96):
        return sorted((work / "medseg-work" / "Task00_SyntheticRods" / "imagesTr").glob("*.nii.gz"))[0]
    if tuple(shape) == DEEP[1]:
        from bench_streaming import write_ct

        path = work / f"ct_{'x'.join(map(str, shape[1:]))}.nii.gz"
        return path if path.exists() else write_ct(path, shape[1:])
    path = work / f"scan_{'x'.join(map(str, shape[1:]))}.nii.gz"
    return path if path.exists() else write_scan(path, shape)


def row(mode, widths, shape, variant, process, plan, added, plan_added, rss, seconds) -> dict:
    error = (plan - process) / process
    added_error = (plan_added - added) / added if added else float("nan")
    found = dict(mode=mode, widths="-".join(map(str, widths)), shape="x".join(map(str, shape)), variant=variant,
                 measured_process_bytes=int(process), planned_process_bytes=int(plan), error=round(error, 4),
                 measured_added_bytes=int(added), planned_added_bytes=int(plan_added),
                 added_error=round(added_error, 4), gnu_time_maxrss_bytes=rss, seconds=round(seconds, 1),
                 verdict=verdict(error))  # fmt: skip
    from medseg_mem.core.units import format_bytes

    print(f"{mode:9} {found['widths']:>17} {found['shape']:>13} {variant:8} measured {format_bytes(process):>9} "
          f"planned {format_bytes(plan):>9} {error:+7.1%} {found['verdict']:4} (added {format_bytes(added)} / "
          f"{format_bytes(plan_added)}, {added_error:+.1%}; {seconds:.0f} s)", flush=True)  # fmt: skip
    return found


def training_rows(work: Path, cases) -> list:
    """``run --variant all`` on each dataset; its rows' measured and planned whole-process peaks."""
    from medseg_mem.report.results import read_results

    rows = []
    for name, prepare_options, run_options in cases:
        folder = work / name.split()[0]
        data = folder / "prepared"
        if not data.exists():
            cli("prepare", "--out", str(data), *prepare_options, cwd=work)
        results, start = work / f"{name.replace(' ', '_')}.csv", time.perf_counter()
        cli("run", "--data", str(data), "--results", str(results), "--runs", str(work / "train-runs"), "--variant",
            "all", "--steps", "2", "--val-every", "1", "--quiet", *run_options, cwd=work)  # fmt: skip
        seconds = (time.perf_counter() - start) / len(VARIANTS)
        table = read_results(results).drop_duplicates("run_id")
        for _, filed in table.iterrows():
            shape = shape_of(data)
            widths = tuple(int(w) for w in filed.channels.split("-"))
            for mode, prefix in (("training", "train_"), ("run-eval", "")):
                process, plan = filed[f"{prefix}process_peak_bytes"], filed[f"{prefix}planned_process_bytes"]
                added = filed["train_peak_memory_bytes" if prefix else "peak_memory_bytes"]
                plan_added = plan - (process - added) if prefix else filed["planned_bytes"]
                rows.append(row(mode, widths, shape, filed.variant, process, plan, added, plan_added, 0, seconds))
    return rows


def shape_of(data: Path):
    from medseg_mem.data.prepared import PreparedDataset

    return PreparedDataset.open(data).largest_image_shape()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/plan_vs_predict_cpu.csv"))
    parser.add_argument("--quick", action="store_true", help="the small grid and the embedded default only")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        os.environ["MEDSEG_MEM_CACHE"] = str(work / "calibration-cache")  # this benchmark measures its own
        timings = timed_plans(work)
        cli("prepare", cwd=work)
        grid = [(widths, [(1, 32, 32, 96)], VARIANTS) for widths in SMALL] + [(DEEP[0], [DEEP[1]], DEEP[2])]
        if not args.quick:
            grid += [(widths, SHAPES, VARIANTS) for widths in WIDTHS] + [(LIVER[0], [LIVER[1]], VARIANTS)]
        rows = inference_rows(work, grid)
        rows += training_rows(work, TRAINING[:1] if args.quick else TRAINING)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as stream:
        fields = list(dict.fromkeys(key for found in rows for key in found))
        writer = csv.DictWriter(stream, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
    misses = sum(r["verdict"] != "ok" for r in rows)
    print(f"{len(rows) - misses} of {len(rows)} within [{LOW:+.0%}, {HIGH:+.0%}] (whole process); "
          f"first plan {timings['first']} s, second folder {timings['second']} s; "
          f"{time.perf_counter() - start:.0f} s; rows in {args.out}")


if __name__ == "__main__":
    main()
