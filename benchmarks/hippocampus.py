"""Real-data benchmark: the three variants on MSD Task04_Hippocampus, trained and tested on one device.

Prepares ``../shared/data/Task04_Hippocampus`` (read-only) into a work folder, then runs ``full``, ``patch`` and
``cascade`` with the settings below and appends per-class test Dice, peak inference memory (with its method)
and inference time to ``benchmarks/results/hippocampus_<device>.csv``; prints the comparison table.

Example (CPU, ~20 min per variant on 2 cores)::

    python benchmarks/hippocampus.py --steps 800 --channels 16,32,64,128,256 --batch-size 4 --lr 1e-3

Dice per CPU-minute: ``--minutes 15 --snapshots 5,10`` trains each variant for 15 minutes of wall clock
(``run --time-limit``; without ``--steps`` the step cap is then out of reach, so the clock decides) and files the
test Dice of its best checkpoint at 5 and 10 minutes as snapshot rows (``run --snapshots``) beside the final
rows; ``medseg-mem compare`` of the CSV then draws ``comparison-time.png``. A cascade takes snapshots only with
``--stage2-guidance truth`` (real data's default, ``predicted``, trains fold models in stage 1's share).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from medseg_mem.core.changes import RunChanges
from medseg_mem.core.config import InferenceConfig, RunRequest, parse_widths
from medseg_mem.core.prepare_config import PrepareConfig
from medseg_mem.data.prepare import prepare
from medseg_mem.core.device import resolve_device
from medseg_mem.core.names import AUGMENT_NAMES, LR_SCHEDULE_NAMES, OPTIMIZER_NAMES, STAGE2_GUIDANCE_NAMES
from medseg_mem.runner.run import run_variants

ROOT = Path(__file__).resolve().parents[1]
TASK = ROOT.parent / "shared" / "data" / "Task04_Hippocampus"
STEPS = 800
TIMED_STEPS = 1_000_000


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", type=Path, default=TASK, help="MSD Task04_Hippocampus folder")
    parser.add_argument("--work", type=Path, default=Path("medseg-work/hippocampus"), help="prepared data + runs")
    parser.add_argument("--variants", default="full,patch,cascade")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"training steps per stage [{STEPS}; with --minutes {TIMED_STEPS}: the clock decides]")
    parser.add_argument("--minutes", type=float, default=None, help="time limit per variant (run --time-limit)")
    parser.add_argument("--snapshots", default=None, help="marks in minutes, e.g. 5,10 (run --snapshots)")
    parser.add_argument("--val-every", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--channels", default="16,32,64,128,256", help="U-Net widths (spec: 32,64,128,256,512)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (thesis: 3e-4)")
    parser.add_argument("--loss", default="dice_ce", choices=("dice", "dice_ce"))
    parser.add_argument("--lr-schedule", default=None, choices=LR_SCHEDULE_NAMES, help="[the profile's: poly]")
    parser.add_argument("--optimizer", default="adam", choices=OPTIMIZER_NAMES)
    parser.add_argument("--augment", default="none", choices=AUGMENT_NAMES)
    parser.add_argument("--foreground-oversample", type=float, default=0.0, help="slab stages: share of slabs with foreground")
    parser.add_argument("--deep-supervision", action="store_true")
    parser.add_argument("--tta", action="store_true", help="test-time mirroring in the test evaluation")
    parser.add_argument("--guidance", default="onehot", choices=("onehot", "label"), help="cascade guidance")
    parser.add_argument("--stage2-guidance", default=None, choices=STAGE2_GUIDANCE_NAMES,
                        help="cascade stage 2 trained on stage 1's out-of-fold predictions or on the ground truth "
                             "[the profile's: predicted]")
    parser.add_argument("--guidance-folds", type=int, default=None, help="folds with --stage2-guidance predicted [2]")
    parser.add_argument("--seed", type=int, default=0, help="seeds weights and sampling (run --seed)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--results", type=Path, default=None, help="default: benchmarks/results/hippocampus_<device>.csv")
    return parser.parse_args()


def main() -> None:
    args = arguments()
    if not args.task.is_dir():
        raise SystemExit(f"{args.task}: not found; this benchmark needs ../shared/data/Task04_Hippocampus")
    prepared = args.work / "prepared"
    if not (prepared / "manifest.json").is_file():
        prepare(PrepareConfig(task_dir=args.task, out_dir=prepared))
    device = resolve_device(args.device)
    results = args.results or ROOT / "benchmarks" / "results" / f"hippocampus_{device.type}.csv"
    steps = args.steps or (STEPS if args.minutes is None else TIMED_STEPS)
    marks = () if args.snapshots is None else tuple(float(mark) for mark in args.snapshots.split(","))
    changes = RunChanges.of(  # None: the profile's
        steps=steps, val_every=args.val_every, batch_size=args.batch_size, time_limit=args.minutes, snapshots=marks,
        channels=parse_widths(args.channels), loss=args.loss, lr=args.lr, device=device.type, guidance=args.guidance,
        lr_schedule=args.lr_schedule, optimizer=args.optimizer, augment=args.augment,
        foreground_oversample=args.foreground_oversample, deep_supervision=args.deep_supervision, seed=args.seed,
        stage2_guidance=args.stage2_guidance, guidance_folds=args.guidance_folds,
    )  # fmt: skip
    request = RunRequest(tuple(args.variants.split(",")), prepared, results, args.work / "runs", None, changes,
                         inference=InferenceConfig(tta=args.tta))  # fmt: skip
    started = time.perf_counter()
    run_variants(request)
    print(f"benchmark finished in {time.perf_counter() - started:.0f} s on {device}; rows in {results}")


if __name__ == "__main__":
    main()
