"""GPU check: every CUDA figure the docs promise, measured on one GPU in one script (under 8 minutes on an H100).

Parts (``--parts``, each a kind of row in one CSV):

* ``inference``: each variant (``full``, ``patch``, ``cascade``) segments a random volume at each size
  (``--sizes``: BraTS 4x240x240x155 with 4 classes, liver-like 1x512x512x208 with 3) with random-weight spec
  U-Nets (widths 32-512, channels-last), through ``bench_memory.variant_setup``, once per ``--inference-precisions``.
* ``training``: one training step (Adam, Dice+CE; ``bench_train_memory.timed_step_setup``) of every stage of each
  variant at the stage's own input (the whole volume; a 16-voxel slab; the cascade's downsampled volume and its
  guided slab), at each ``--train-configs`` (``fp32``; ``bf16+ckpt``: bf16 autocast with activation
  checkpointing); the variant's row is its worst stage.
* ``hippocampus``: one ``benchmarks/hippocampus.py --minutes 5`` run (``--hippocampus-variants``) on MSD
  Task04_Hippocampus; its row gives the mean test Dice, steps and the run's own peaks.

Every memory row is measured twice in this process with :func:`medseg_mem.memory.measure.measure_peak`:
``torch.cuda.max_memory_allocated`` (what tensors held, the thesis's figure) and ``max_memory_reserved`` (what the
caching allocator took, after emptying its cache: what ``nvidia-smi`` sees less the CUDA context), both as
increments over what was there before. The planner's figure (``plan_variant`` with this GPU's cached calibration,
measured on first use) is set against the reserved peak: ``plan_error = (planned - measured) / measured`` and the
verdict of ``bench_plan_vs_predict`` (ok within -5 % / +15 %). A row whose plan exceeds 85 % of the GPU's free
memory is written as ``skipped`` with the plan, not run. ``--minutes`` bounds the whole check: a part that would
start past it is skipped with a line, and the hippocampus run is shortened to what is left.

Without a CUDA device the script prints one line and exits with status 2. Rows go to
``benchmarks/results/gpu_check_<gpu>.csv`` (appended) after every measurement.

Usage:
    python benchmarks/gpu_check.py                                   # everything, about 8 minutes
    python benchmarks/gpu_check.py --parts inference --sizes brats   # one part, one size
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks, also when imported by tests

from bench_memory import CHANNELS, variant_setup  # noqa: E402
from bench_plan_vs_predict import verdict  # noqa: E402
import bench_train_memory  # noqa: E402
from bench_train_memory import CONFIGS, parse_config, timed_step_setup  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: The sizes the docs quote: ``(image shape C,X,Y,Z, classes)``.
SIZES = {"brats": ((4, 240, 240, 155), 4), "liver": ((1, 512, 512, 208), 3)}
VARIANTS = ("full", "patch", "cascade")
PARTS = ("inference", "training", "hippocampus")
TRAIN_CONFIGS = ("fp32", "bf16+ckpt")
SAFETY = 0.85  # run a row only if its plan is below this share of the free GPU memory
COLUMNS = (
    "timestamp", "commit", "part", "size", "shape", "variant", "config", "stage", "status", "peak_allocated_bytes",
    "peak_reserved_bytes", "planned_bytes", "plan_error", "verdict", "seconds", "mean_dice", "steps", "device",
    "gpu", "torch_version",
)  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    """The options, checked: unknown sizes, parts, variants or configs are a one-line ``parser.error``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"some of {', '.join(PARTS)}")
    parser.add_argument("--sizes", default=",".join(SIZES), help=f"some of {', '.join(SIZES)}")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--inference-precisions", default="fp32", help="fp32, bf16, fp16 [fp32]")
    parser.add_argument("--train-configs", default=",".join(TRAIN_CONFIGS), help="fp32, bf16+ckpt, fp32+ckpt, ...")
    parser.add_argument("--minutes", type=float, default=8.0, help="time bound of the whole check [8]")
    parser.add_argument("--hippocampus-minutes", type=float, default=5.0, help="training time of the run [5]")
    parser.add_argument("--hippocampus-variants", default="full", help="variants of that run [full]")
    parser.add_argument("--out", type=Path, help="CSV to append to [benchmarks/results/gpu_check_<gpu>.csv]")
    args = parser.parse_args(argv)
    choices = (("parts", PARTS), ("sizes", SIZES), ("variants", VARIANTS), ("hippocampus_variants", VARIANTS),
               ("inference_precisions", ("fp32", "bf16", "fp16")), ("train_configs", CONFIGS))  # fmt: skip
    for option, allowed in choices:
        names = [name for name in getattr(args, option).split(",") if name]
        wrong = [name for name in names if name not in allowed]
        if wrong or not names:
            parser.error(f"--{option.replace('_', '-')}: {', '.join(wrong) or 'nothing'} is not one of "
                         f"{', '.join(allowed)}")  # fmt: skip
        setattr(args, option, names)
    if args.minutes <= 0 or args.hippocampus_minutes <= 0:
        parser.error("--minutes and --hippocampus-minutes must be positive")
    return args


def stage_inputs(variant: str, shape, classes: int, model=None):
    """``[(stage name, training input shape (1, C, X, Y, Z))]`` of each stage of ``variant``: the planner's own
    sizes (whole volume, slab, downsampled volume) and channels (image plus the cascade's guidance).

    Example:
        >>> stage_inputs("cascade", (4, 240, 240, 155), 4)
        [('stage1', (1, 4, 72, 72, 46)), ('stage2', (1, 7, 240, 240, 16))]
    """
    from medseg_mem.core.config import ModelConfig
    from medseg_mem.memory.planner_training import _stage_size
    from medseg_mem.variants import get_variant

    model = model or ModelConfig(channels=CHANNELS)
    return [(stage.name, (1, stage.in_channels(shape[0], classes, model), *_stage_size(stage, shape, model)))
            for stage in get_variant(variant).stages()]  # fmt: skip


def planned(variant: str, shape, classes: int, mode: str, config: str, device: str, calibration=None, model=None):
    """The planner's figure (bytes on ``device``) for one row: ``predict``'s inference at ``config``'s precision,
    or one training step (batch 1, no validation, no loader) at ``config``'s levers, channels-last."""
    from medseg_mem.core.config import InferenceConfig, ModelConfig, TrainConfig
    from medseg_mem.memory.planner import UNCALIBRATED, plan_variant

    precision, checkpointing = parse_config(config)
    options = dict(model=model or ModelConfig(channels=CHANNELS), calibration=calibration or UNCALIBRATED,
                   device=device)  # fmt: skip
    if mode == "inference":
        return plan_variant(variant, shape, classes, inference=InferenceConfig(precision=precision), **options)
    train = TrainConfig(batch_size=1, precision=precision, checkpointing=checkpointing, workers=0, cache_bytes=0,
                        channels_last=True)  # fmt: skip
    return plan_variant(variant, shape, classes, train=train, validation=False, **options)


def memory_row(part, size, variant, config, stage, allocated, reserved, planned_bytes, seconds, device, gpu) -> dict:
    """One measured row: both CUDA counters, the plan against the reserved peak and its verdict."""
    error = (planned_bytes - reserved) / reserved if reserved else float("nan")
    return base_row(part, size, variant, config, device, gpu, stage=stage, status="measured",
                    peak_allocated_bytes=int(allocated), peak_reserved_bytes=int(reserved),
                    planned_bytes=int(planned_bytes), plan_error=round(error, 4),
                    verdict=verdict(error) if reserved else "", seconds=round(seconds, 3))  # fmt: skip


def skipped_row(part, size, variant, config, planned_bytes, free_bytes, device, gpu) -> dict:
    """A row not run because its plan exceeds :data:`SAFETY` of the free memory (the plan is still reported)."""
    return base_row(part, size, variant, config, device, gpu, planned_bytes=int(planned_bytes),
                    status=f"skipped: planned > {SAFETY:.0%} of {free_bytes} free bytes")  # fmt: skip


def base_row(part, size, variant, config, device, gpu, **values) -> dict:
    """A row over :data:`COLUMNS`: when, which commit and machine, what; the caller's ``values`` fill the rest."""
    import torch

    shape = "x".join(map(str, SIZES[size][0])) if size in SIZES else ""
    row = dict.fromkeys(COLUMNS, "")
    row.update(timestamp=datetime.now(timezone.utc).isoformat(timespec="seconds"), commit=commit(), part=part,
               size=size, shape=shape, variant=variant, config=config, device=device, gpu=gpu,
               torch_version=torch.__version__, **values)  # fmt: skip
    return row


def commit() -> str:
    """The checkout's short commit hash (``""`` outside a git checkout)."""
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else ""


def append_row(path: Path, row: dict) -> None:
    """Append ``row`` to the CSV at ``path`` (header first for a new file), atomically; other columns stop it."""
    bench_train_memory.append_row(path, row, COLUMNS)


def summary_line(row: dict) -> str:
    """``training brats cascade bf16+ckpt stage2: allocated 5.10 GiB, reserved 5.31 GiB, planned 5.62 GiB
    (+5.8 %, ok), 0.41 s`` (or the skip)."""
    from medseg_mem.core.units import format_bytes

    what = f"{row['part']} {row['size']} {row['variant']} {row['config']}".strip()
    if row["status"] != "measured":
        return f"{what}: {row['status']} (planned {format_bytes(row['planned_bytes'])})"
    return (f"{what} {row['stage']}: allocated {format_bytes(row['peak_allocated_bytes'])}, reserved "
            f"{format_bytes(row['peak_reserved_bytes'])}, planned {format_bytes(row['planned_bytes'])} "
            f"({row['plan_error']:+.1%}, {row['verdict']}), {row['seconds']} s")  # fmt: skip


def hippocampus_rows(results: Path, before: set, seconds: float, device: str, gpu: str) -> list:
    """Rows of the hippocampus run: per variant, its mean foreground test Dice (%), steps, and peaks (allocated:
    what its inference added, ``peak_memory_bytes``; reserved: the process's, ``process_peak_bytes``), from the
    results CSV rows that were not there ``before`` (run ids)."""
    import pandas as pd

    table = pd.read_csv(results)
    table = table[~table.run_id.isin(before)]
    if "budget_seconds" in table:
        table = table[table.budget_seconds.isna()]  # the final rows, not the snapshots
    rows = []
    for run_id, run in table.groupby("run_id", sort=False):
        first = run.iloc[0]
        dice = run[run.class_index > 0].dice.mean()
        rows.append(base_row("hippocampus", "hippocampus", first.variant, "fp32", device, gpu, stage=run_id,
                             status="measured", peak_allocated_bytes=int(first.peak_memory_bytes),
                             peak_reserved_bytes=int(first.get("process_peak_bytes", 0) or 0),
                             mean_dice=round(100 * dice, 2), steps=int(first.train_steps),
                             seconds=round(seconds, 1)))  # fmt: skip
    return rows


class Clock:
    """The check's time bound: ``left()`` minutes from ``--minutes``."""

    def __init__(self, minutes: float, now=time.perf_counter) -> None:
        self.end, self.now = now() + 60 * minutes, now

    def left(self) -> float:
        return (self.end - self.now()) / 60


def measure_pair(setup, args, device: str, grad: bool):
    """``(allocated increment, reserved increment, seconds)`` of ``setup(*args)`` measured twice on ``device``."""
    from medseg_mem.memory.measure import measure_peak

    started = time.perf_counter()
    allocated = measure_peak(setup, args, device, grad=grad)
    reserved = measure_peak(setup, args, device, grad=grad, reserved=True)
    return allocated.peak_bytes, reserved.peak_bytes, (time.perf_counter() - started) / 2


def inference_rows(args, size, calibrations, free: int, device: str, gpu: str):
    """Measure (or skip) each variant's inference at ``size`` and every inference precision."""
    shape, classes = SIZES[size]
    for precision in args.inference_precisions:
        for variant in args.variants:
            plan = planned(variant, shape, classes, "inference", precision, device, calibrations(precision))
            if plan.predicted_bytes > SAFETY * free:
                yield skipped_row("inference", size, variant, precision, plan.predicted_bytes, free, device, gpu)
                continue
            with tempfile.TemporaryDirectory() as folder:
                timing = str(Path(folder) / "seconds.json")
                measured = measure_pair(variant_setup, (shape, classes, variant, precision, 1, timing, device),
                                        device, grad=False)  # fmt: skip
            yield memory_row("inference", size, variant, precision, "", measured[0], measured[1],
                             plan.predicted_bytes, measured[2], device, gpu)  # fmt: skip


def training_rows(args, size, calibrations, free: int, device: str, gpu: str):
    """Measure (or skip) each variant's training step at ``size``: every stage, the worst one's row."""
    shape, classes = SIZES[size]
    for config in args.train_configs:
        precision, checkpointing = parse_config(config)
        for variant in args.variants:
            plan = planned(variant, shape, classes, "training", config, device, calibrations(config))
            if plan.predicted_bytes > SAFETY * free:
                yield skipped_row("training", size, variant, config, plan.predicted_bytes, free, device, gpu)
                continue
            worst = None
            for stage, batch_shape in stage_inputs(variant, shape, classes):
                with tempfile.TemporaryDirectory() as folder:
                    timing = str(Path(folder) / "seconds.json")
                    setup = (batch_shape, classes, CHANNELS, device, precision, checkpointing, True, timing)
                    measured = measure_pair(timed_step_setup, setup, device, grad=True)
                if worst is None or measured[1] > worst[1][1]:
                    worst = (stage, measured)
            stage, (allocated, reserved, seconds) = worst
            yield memory_row("training", size, variant, config, stage, allocated, reserved, plan.predicted_bytes,
                             seconds, device, gpu)  # fmt: skip


def run_hippocampus(args, minutes: float, device: str, gpu: str):
    """One ``benchmarks/hippocampus.py`` run of ``minutes`` per variant; its rows (the run's own go to
    ``benchmarks/results/hippocampus_cuda.csv``)."""
    results = ROOT / "benchmarks" / "results" / "hippocampus_cuda.csv"
    before = set()
    if results.exists():
        import pandas as pd

        before = set(pd.read_csv(results, usecols=["run_id"]).run_id)
    with tempfile.TemporaryDirectory() as work:
        command = [sys.executable, str(ROOT / "benchmarks" / "hippocampus.py"), "--minutes", f"{minutes:g}",
                   "--variants", ",".join(args.hippocampus_variants), "--device", "cuda", "--work", work,
                   "--stage2-guidance", "truth", "--results", str(results)]  # fmt: skip
        started = time.perf_counter()
        try:  # prepare and the test evaluation get 2 minutes beyond the training time
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60 * (minutes + 2))
        except subprocess.TimeoutExpired:
            print(f"hippocampus run stopped after {minutes + 2:g} min (its rows, if any, are in {results})")
            return []
    if done.returncode != 0:
        print(f"hippocampus run failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
        return []
    return hippocampus_rows(results, before, time.perf_counter() - started, device, gpu)


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); run it on a machine with a GPU")
        raise SystemExit(2)
    check(args, torch)


def check(args, torch) -> None:
    """Every part in turn within ``args.minutes``; each row printed and appended as it is measured."""
    from medseg_mem.memory.calibration import cached_calibration
    from medseg_mem.training.calibration_step import training_setup

    device, gpu = "cuda", torch.cuda.get_device_name(0)
    out = args.out or ROOT / "benchmarks" / "results" / f"gpu_check_{re.sub(r'[^A-Za-z0-9]+', '_', gpu)}.csv"
    free = torch.cuda.mem_get_info()[0]
    clock, cache = Clock(args.minutes), {}
    print(f"gpu_check on {gpu}, torch {torch.__version__}, commit {commit()}, {free / 2**30:.1f} GiB free; "
          f"rows in {out}", flush=True)  # fmt: skip

    def calibrations(mode):
        def of(config):
            if (mode, config) not in cache:
                precision, checkpointing = parse_config(config)
                extra = dict(mode="training", checkpointing=checkpointing, training_setup=training_setup)
                cache[mode, config] = cached_calibration(None, device, announce=print, precision=precision,
                                                         channels_last=True, **(extra if mode == "training" else {}))
            return cache[mode, config]

        return of

    builders = {"inference": inference_rows, "training": training_rows}
    for part in (p for p in args.parts if p in builders):
        for size in args.sizes:
            if clock.left() <= 0:
                print(f"{part} {size}: skipped, the {args.minutes:g}-minute bound is reached")
                continue
            for row in builders[part](args, size, calibrations(part), free, device, gpu):
                append_row(out, row)
                print(summary_line(row), flush=True)
    if "hippocampus" in args.parts:
        minutes = min(args.hippocampus_minutes, clock.left() - 1.5)  # prepare and test evaluation: ~1.5 min
        if minutes < 1:
            print(f"hippocampus: skipped, {clock.left():.1f} min left of {args.minutes:g}")
            return
        for row in run_hippocampus(args, minutes, device, gpu):
            append_row(out, row)
            print(f"hippocampus {row['variant']}: mean test Dice {row['mean_dice']} %, {row['steps']} steps in "
                  f"{minutes:g} min, run {row['stage']}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
