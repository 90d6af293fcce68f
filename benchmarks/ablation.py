"""Ablation of nnU-Net's training recipe on MSD Task04_Hippocampus: each element alone against a baseline, at
one wall-clock budget, one job at a time.

Every arm is ``benchmarks/hippocampus.py`` with the baseline settings plus one element (``ARMS``); test-time
mirroring is the baseline's and the augmented arm's own checkpoints evaluated again with ``--tta`` (``run
--resume``), so it changes nothing but the evaluation. A second seed of the baseline shows the run-to-run spread an
element must exceed. Then one markdown row per arm: what differs from its variant's baseline (read from each run's
``run.json``), mean test Dice and its change, steps, training wall time, training peak memory and inference time per
case.

Example (2-core CPU: ~6 min per arm)::

    python benchmarks/ablation.py --minutes 5
    python benchmarks/ablation.py --table-only     # the table again, from the CSV and the runs
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

import pandas as pd

ROOT = Path(__file__).resolve().parent
BASELINE = ("--channels", "8,16,32,64,128", "--batch-size", "4", "--lr", "2e-3", "--lr-schedule", "poly",
            "--val-every", "200")  # fmt: skip
ARMS = (
    ("full", ()), ("full", ("--seed", "1")), ("full", ("--lr-schedule", "constant")),
    ("full", ("--augment", "nnunet")), ("full", ("--optimizer", "sgd", "--lr", "1e-2")),
    ("full", ("--deep-supervision",)), ("patch", ()), ("patch", ("--foreground-oversample", "0.33")),
)  # fmt: skip
SETTINGS = ("train", "model")


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0, help="training wall clock of every arm")
    parser.add_argument("--work", type=Path, default=Path("medseg-work/hippocampus"), help="prepared data + runs")
    parser.add_argument("--results", type=Path, default=ROOT / "results" / "hippocampus_ablation_cpu.csv")
    parser.add_argument("--table-only", action="store_true", help="print the table, run nothing")
    return parser.parse_args()


def run_arms(args: argparse.Namespace) -> None:
    """Each arm in turn (a fresh process each), then the baseline's checkpoints evaluated with ``--tta``."""
    common = ["--minutes", str(args.minutes), "--work", str(args.work), "--results", str(args.results)]
    for variant, extra in ARMS:
        print(f"== {variant} {' '.join(extra) or '(baseline)'}", flush=True)
        subprocess.run([sys.executable, str(ROOT / "hippocampus.py"), "--variants", variant, *common, *BASELINE,
                        *extra], check=True)  # fmt: skip
    for augment in ("none", "nnunet"):  # mirroring pays only on a network that saw mirrored samples
        mirror(args, first_run(args.results, "full", augment))


def first_run(results: Path, variant: str, augment: str) -> str:
    """The run id of ``variant``'s first run in the CSV with ``augment`` (the arms run in ``ARMS`` order)."""
    table = pd.read_csv(results)
    return str(table[(table.variant == variant) & (table.augment == augment)].run_id.iloc[0])


def mirror(args: argparse.Namespace, run_id: str) -> None:
    """Evaluate run ``run_id`` again with ``--tta`` (nothing is trained: its clock is spent) and add its rows."""
    with tempfile.TemporaryDirectory() as folder:
        mirrored = Path(folder) / "tta.csv"
        command = ["run", "--resume", run_id, "--runs", str(args.work / "runs"), "--results", str(mirrored), "--tta"]
        subprocess.run([sys.executable, "-m", "medseg_mem", *command, "--quiet"], check=True)
        rows = pd.concat([pd.read_csv(args.results), pd.read_csv(mirrored)], ignore_index=True)
    rows.to_csv(args.results, index=False)


def settings(runs: Path, run_id: str) -> Dict[str, object]:
    """The run's settings from its ``run.json``, flattened (``train.lr``, ``model.channels`` ...)."""
    record = json.loads((runs / run_id / "run.json").read_text(encoding="utf-8"))
    return {f"{part}.{key}": value for part in SETTINGS for key, value in record[part].items()}


def differences(mine: Dict[str, object], base: Dict[str, object], tta: str) -> str:
    """What differs from the baseline, e.g. ``augment nnunet`` or ``tta 0-1-2``."""
    skipped = ("train.time_limit", "train.snapshots")
    parts = [f"{key.split('.', 1)[1]} {mine[key]}" for key in mine
             if key not in skipped and mine.get(key) != base.get(key)]  # fmt: skip
    return ", ".join(parts + ([f"tta {tta}"] if tta != "off" else [])) or "baseline"


def table(args: argparse.Namespace) -> List[str]:
    """One markdown row per (run, tta) of the CSV, its change against its variant's first run."""
    rows = pd.read_csv(args.results)
    rows["tta"] = rows["tta"].fillna("off").astype(str)
    runs = args.work / "runs"
    lines = ["| variant | element | mean Dice | change | steps | train time | train peak | s / case |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for variant, part in rows.groupby("variant", sort=False):
        base_id = str(part.run_id.iloc[0])
        base = settings(runs, base_id)
        base_dice = 100 * part[(part.run_id == base_id) & (part.tta == "off")].dice.mean()
        for (run_id, tta), arm in part.groupby(["run_id", "tta"], sort=False):
            dice, first = 100 * arm.dice.mean(), arm.iloc[0]
            lines.append(f"| `{variant}` | {differences(settings(runs, run_id), base, tta)} | {dice:.1f} | "
                         f"{dice - base_dice:+.1f} | {int(first.train_steps):,} | {first.train_seconds:.0f} s | "
                         f"{peak_text(first)} | {first.inference_seconds_per_case:.3f} |")  # fmt: skip
    return lines


def peak_text(row) -> str:
    """The training peak in MiB, or a dash where the run predates its measurement."""
    value = row.get("train_peak_memory_bytes")
    return "—" if value is None or pd.isna(value) else f"{value / 2**20:.0f} MiB"


def main() -> None:
    args = arguments()
    if not args.table_only:
        run_arms(args)
    print("\n".join(table(args)))


if __name__ == "__main__":
    main()
