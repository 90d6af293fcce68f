"""Training memory must not grow with the number of cases: `run` on a capacity task of N cases, for several N.

For each prepared folder given (e.g. the BraTS-sized capacity task with 10 and with 40 cases, made by
``medseg-mem prepare --synthetic brats-like --cases N``), runs ``run_variants`` (the library behind
``medseg-mem run``) in a fresh Python process and reports:

* ``peak_rss`` - the run process's own peak resident memory (``VmHWM`` of ``/proc/self/status``; the spawned
  process that measures peak inference memory is not in it; ``ru_maxrss`` of the children is no help here, as a
  spawned child counts its parent's pages between fork and exec);
* ``s/step`` per variant - training seconds / training steps from the results CSV;
* the wall time.

It prints a table and the ratio of the largest to the smallest dataset's ``peak_rss`` (goal <= 1.10, and
every run below 6 GiB), and appends to ``benchmarks/results/capacity_<device>.csv`` (with the precision,
checkpointing and layout used; rows before 2026-11-29 were contiguous).

Example::

    medseg-mem prepare --synthetic brats-like --cases 10 --out /tmp/cap/c10/prepared
    medseg-mem prepare --synthetic brats-like --cases 40 --out /tmp/cap/c40/prepared
    python benchmarks/bench_capacity.py /tmp/cap/c10/prepared /tmp/cap/c40/prepared --steps 10
    python benchmarks/bench_capacity.py /tmp/cap/c10/prepared /tmp/cap/c40/prepared --precision bf16 --checkpointing
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30


def arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prepared", type=Path, nargs="+", help="prepared folders, smallest first")
    parser.add_argument("--variants", default="full,patch,cascade")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--channels", default="8,16,32,64,128")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing (run --checkpointing)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="channels-last training, run's default [on]")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/capacity_<device>.csv")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def child(args: argparse.Namespace) -> None:
    """Runs in the fresh process: one ``run_variants`` call, then a JSON line with what it measured."""
    from medseg_mem.config import RunRequest
    from medseg_mem.training.run import run_variants

    prepared = args.prepared[0]
    overrides = (("steps", args.steps), ("val_every", args.steps), ("device", args.device),
                 ("channels", tuple(int(c) for c in args.channels.split(","))),
                 ("precision", args.precision), ("checkpointing", args.checkpointing),
                 ("channels_last", args.channels_last))  # fmt: skip
    results = args.work / "results.csv"
    request = RunRequest(tuple(args.variants.split(",")), prepared, results, args.work / "runs", None, overrides,
                         progress=False)  # fmt: skip
    started = time.perf_counter()
    outcomes = run_variants(request, echo=lambda line: print(line, file=sys.stderr))
    report = {
        "wall_seconds": time.perf_counter() - started,
        "peak_rss": status_bytes("VmHWM"),
        "seconds_per_step": {o.variant: o.train_seconds / o.train_steps for o in outcomes},
        "dice": {o.variant: o.evaluation.dice for o in outcomes},
    }
    print(json.dumps(report))


def measure(prepared: Path, args: argparse.Namespace) -> dict:
    """Run the child for one prepared folder in a fresh interpreter and parse its report."""
    with tempfile.TemporaryDirectory(prefix="capacity-") as work:
        command = [sys.executable, __file__, str(prepared), "--child", "--work", work, "--steps", str(args.steps),
                   "--channels", args.channels, "--variants", args.variants, "--device", args.device,
                   "--precision", args.precision] + (["--checkpointing"] if args.checkpointing else [])
        command += ["--channels-last" if args.channels_last else "--no-channels-last"]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"run on {prepared} failed:\n{done.stderr[-3000:]}")
    manifest = json.loads((prepared / "manifest.json").read_text())
    return {"prepared": str(prepared), "cases": len(manifest["cases"]), **json.loads(done.stdout.splitlines()[-1])}


FIELDS = ["cases", "peak_rss_bytes", "wall_seconds", "variant", "seconds_per_step",
          "steps", "channels", "precision", "checkpointing", "channels_last", "device", "torch"]  # fmt: skip


def write_rows(rows, path: Path, args) -> None:
    """Append one row per case count and variant (a new file gets the header)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file()
    with path.open("a", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=FIELDS, lineterminator="\n")
        if new:
            writer.writeheader()
        for row in rows:
            for variant, seconds in row["seconds_per_step"].items():
                writer.writerow({"cases": row["cases"], "peak_rss_bytes": row["peak_rss"],
                                 "wall_seconds": round(row["wall_seconds"], 1),
                                 "variant": variant, "seconds_per_step": round(seconds, 3), "steps": args.steps,
                                 "channels": args.channels, "precision": args.precision,
                                 "checkpointing": args.checkpointing, "channels_last": args.channels_last,
                                 "device": args.device,
                                 "torch": torch.__version__})


def main() -> None:
    args = arguments()
    if args.child:
        return child(args)
    rows = [measure(prepared, args) for prepared in args.prepared]
    print(f"precision {args.precision}, checkpointing {'on' if args.checkpointing else 'off'}, "
          f"{'channels-last' if args.channels_last else 'contiguous'}, {args.device}")
    print(f"{'cases':>6} {'peak RSS':>10} {'wall':>8}  seconds per training step")
    for row in rows:
        steps = ", ".join(f"{v} {s:.2f}" for v, s in row["seconds_per_step"].items())
        print(f"{row['cases']:>6} {row['peak_rss'] / GIB:>8.2f} G {row['wall_seconds']:>7.0f}s  {steps}")
    ratio = rows[-1]["peak_rss"] / rows[0]["peak_rss"]
    below = all(row["peak_rss"] < 6 * GIB for row in rows)
    print(f"peak RSS {rows[-1]['cases']} cases / {rows[0]['cases']} cases = {ratio:.3f} (goal <= 1.10); "
          f"all below 6 GiB: {below}; method: VmHWM of the run process")
    out = args.out or ROOT / "benchmarks" / "results" / f"capacity_{args.device}.csv"
    write_rows(rows, out, args)
    print(f"rows in {out}")


if __name__ == "__main__":
    main()
