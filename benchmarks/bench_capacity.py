"""A run's memory must not grow with the number of cases: `run` on the same task with N cases, for several N.

For each prepared folder (given, or made with ``--make``: the BraTS-sized capacity task with each case count, see
``medseg_mem.data.capacity``) and each variant, runs ``run_variants`` (the library behind ``medseg-mem run``) for
that one variant in a fresh Python process, so every variant's figures are its own, and reports:

* ``peak RSS`` - the run process's own peak resident memory over the whole run
  (:func:`medseg_mem.memory.rss.process_peak`: ``VmHWM`` and every high-water mark the run's own measurements
  reset, since ``run`` resets the kernel's counter to measure its evaluation; ``VmHWM`` alone at the end is only the
  peak since the last reset, and is printed beside it; the spawned process that measures peak inference memory is
  not in either);
* ``train peak`` - the training peak the run files (``train_peak_memory_bytes``: what training added at its peak,
  the largest over the stages and the cascade's fold models);
* the split (train/val/test): the default 60/20/20 split grows the validation and test splits with the task, so
  what validation and evaluation keep per case shows here too;
* ``s/step`` - training seconds / training steps.

It prints one table per variant and, per variant, the ratio of the largest to the smallest dataset's peak RSS
(goal <= 1.10), and appends to ``benchmarks/results/capacity_per_variant_<device>.csv``.

Example (the issue's setting: 2 channels of 240 x 240 x 155, 6 and 24 cases, 2 steps of widths 2,4)::

    python benchmarks/bench_capacity.py --make 6,24 --in-channels 2 --work /tmp/capacity
    python benchmarks/bench_capacity.py /tmp/capacity/c6/prepared /tmp/capacity/c24/prepared --steps 10 \\
        --channels 8,16,32,64,128 --precision bf16 --checkpointing
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
GIB, MIB = 2**30, 2**20
FIELDS = ["cases", "split", "variant", "peak_rss_bytes", "train_peak_bytes", "wall_seconds", "seconds_per_step",
          "steps", "channels", "in_channels", "shape", "precision", "checkpointing", "channels_last", "device",
          "torch"]  # fmt: skip


def arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prepared", type=Path, nargs="*", help="prepared folders, smallest first (or use --make)")
    parser.add_argument("--make", help="case counts to generate and prepare, e.g. 6,24 (capacity task)")
    parser.add_argument("--in-channels", type=int, default=4, help="with --make: image channels, 1-4 [4]")
    parser.add_argument("--shape", default="240,240,155", help="with --make: X,Y,Z of every case [240,240,155]")
    parser.add_argument("--work", type=Path, help="with --make: where the tasks go (default: a temporary folder)")
    parser.add_argument("--variants", default="full,patch,cascade")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--channels", default="2,4", help="U-Net widths [2,4]")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing (run --checkpointing)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="channels-last training, run's default [on]")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: benchmarks/results/capacity_per_variant_<device>.csv")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--run-work", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def child(args: argparse.Namespace) -> None:
    """Runs in the fresh process: ``run_variants`` for the one variant ``args.child``, then a JSON line."""
    from medseg_mem.core.changes import RunChanges
    from medseg_mem.memory.rss import process_peak, status_bytes
    from medseg_mem.core.config import RunRequest, parse_widths
    from medseg_mem.runner.run import run_variants

    changes = RunChanges.of(steps=args.steps, val_every=args.steps, device=args.device,
                            channels=parse_widths(args.channels), precision=args.precision,
                            checkpointing=args.checkpointing, channels_last=args.channels_last)  # fmt: skip
    request = RunRequest((args.child,), args.prepared[0], args.run_work / "results.csv", args.run_work / "runs",
                         None, changes, progress=False)  # fmt: skip
    started = time.perf_counter()
    (outcome,) = run_variants(request, echo=lambda line: print(line, file=sys.stderr))
    print(json.dumps({
        "wall_seconds": time.perf_counter() - started, "peak_rss": process_peak(), "hwm_at_end": status_bytes("VmHWM"),
        "train_peak": outcome.train_peak_bytes, "seconds_per_step": outcome.train_seconds / outcome.train_steps,
    }))  # fmt: skip


def measure(prepared: Path, variant: str, args: argparse.Namespace) -> dict:
    """Run the child for one prepared folder and variant in a fresh interpreter and parse its report."""
    with tempfile.TemporaryDirectory(prefix="capacity-") as work:
        command = [sys.executable, __file__, str(prepared), "--child", variant, "--run-work", work,
                   "--steps", str(args.steps), "--channels", args.channels, "--device", args.device,
                   "--precision", args.precision] + (["--checkpointing"] if args.checkpointing else [])
        command += ["--channels-last" if args.channels_last else "--no-channels-last"]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{variant} run on {prepared} failed:\n{done.stderr[-3000:]}")
    return {"prepared": str(prepared), "variant": variant, **describe(prepared),
            **json.loads(done.stdout.splitlines()[-1])}  # fmt: skip


def describe(prepared: Path) -> dict:
    """Cases, split sizes, channels and largest shape of a prepared folder."""
    from medseg_mem.data.prepared import PreparedDataset

    manifest = json.loads((prepared / "manifest.json").read_text())
    split = PreparedDataset.open(prepared).split
    shape = max((tuple(case["prepared_shape"]) for case in manifest["cases"]), key=lambda s: s[0] * s[1] * s[2])
    return {"cases": len(manifest["cases"]), "split": "/".join(str(len(split[s])) for s in ("train", "val", "test")),
            "in_channels": manifest["in_channels"], "shape": "x".join(map(str, shape))}  # fmt: skip


def make_tasks(args: argparse.Namespace, work: Path):
    """Write and prepare the capacity task once per case count of ``--make``; return the prepared folders."""
    from medseg_mem.core.prepare_config import PrepareConfig
    from medseg_mem.data.capacity import TASK_FOLDER, write_brats_like_task
    from medseg_mem.data.prepare import prepare

    shape = tuple(int(side) for side in args.shape.split(","))
    folders = []
    for count in sorted(int(n) for n in args.make.split(",")):
        task = write_brats_like_task(work / f"c{count}" / TASK_FOLDER, n_cases=count, shape=shape,
                                     channels=args.in_channels)  # fmt: skip
        out = work / f"c{count}" / "prepared"
        prepare(PrepareConfig(task_dir=task, out_dir=out, overwrite=True), progress=False)
        folders.append(out)
    return folders


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
            writer.writerow({
                "cases": row["cases"], "split": row["split"], "variant": row["variant"],
                "peak_rss_bytes": row["peak_rss"], "train_peak_bytes": row["train_peak"],
                "wall_seconds": round(row["wall_seconds"], 1), "seconds_per_step": round(row["seconds_per_step"], 3),
                "steps": args.steps, "channels": args.channels, "in_channels": row["in_channels"],
                "shape": row["shape"], "precision": args.precision, "checkpointing": args.checkpointing,
                "channels_last": args.channels_last, "device": args.device, "torch": torch.__version__,
            })  # fmt: skip


def report(rows, args) -> None:
    """One table per variant, and its peak-RSS ratio of the largest to the smallest dataset."""
    print(f"widths {args.channels}, {args.steps} steps, {args.precision}, checkpointing "
          f"{'on' if args.checkpointing else 'off'}, {'channels-last' if args.channels_last else 'contiguous'}, "
          f"{args.device}; peak RSS: the run process's whole-run peak (process_peak); VmHWM at end: since the last "
          f"reset; train peak: what run files")  # fmt: skip
    for variant in args.variants.split(","):
        mine = [row for row in rows if row["variant"] == variant]
        print(f"\n{variant}\n{'cases':>6} {'split':>10} {'peak RSS':>10} {'VmHWM at end':>13} {'train peak':>11} "
              f"{'s/step':>7} {'wall':>6}")  # fmt: skip
        for row in mine:
            print(f"{row['cases']:>6} {row['split']:>10} {row['peak_rss'] / GIB:>8.3f} G "
                  f"{row.get('hwm_at_end', 0) / GIB:>11.3f} G {row['train_peak'] / MIB:>8.0f} MiB "
                  f"{row['seconds_per_step']:>7.2f} {row['wall_seconds']:>5.0f}s")  # fmt: skip
        ratio = mine[-1]["peak_rss"] / mine[0]["peak_rss"]
        print(f"peak RSS {mine[-1]['cases']} / {mine[0]['cases']} cases = {ratio:.3f} (goal <= 1.10)")


def main() -> None:
    args = arguments()
    if args.child:
        return child(args)
    with tempfile.TemporaryDirectory(prefix="capacity-tasks-") as scratch:
        folders = list(args.prepared) + (make_tasks(args, args.work or Path(scratch)) if args.make else [])
        if not folders:
            raise SystemExit("give prepared folders or --make N1,N2")
        rows = [measure(prepared, variant, args) for variant in args.variants.split(",") for prepared in folders]
    report(rows, args)
    out = args.out or ROOT / "benchmarks" / "results" / f"capacity_per_variant_{args.device}.csv"
    write_rows(rows, out, args)
    print(f"\nrows in {out}")


if __name__ == "__main__":
    main()
