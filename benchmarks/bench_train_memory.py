"""Training-memory benchmark: peak memory and time of one full-volume training step, per memory lever.

A random-weight spec U-Net (widths 32..512) takes one training step on a random volume: forward under
``precision``'s autocast, Dice+CE loss on float32 logits, backward and an Adam step, through the training
loop's own :func:`medseg_mem.training.step.train_step`. Configurations: ``fp32``, ``bf16`` (or ``fp16``), each
with ``+ckpt`` (activation checkpointing). Each step runs in :func:`medseg_mem.memory.measure.measure_peak`
with ``grad=True`` (CPU: a spawned process, peak RSS; CUDA: ``max_memory_allocated``). The Adam states already
exist when the measured step starts (created by a zero-gradient step in the setup, which leaves the weights
unchanged and costs a fraction of a real step), as in every step but the first; no warm-up step is run, so the
step is measured - and timed - once. Next to each reading: the planner's ``plan --mode training`` prediction
for the same settings (this device's training calibration, measured once and cached) and its relative error.

The network is channels-last as ``medseg-mem run`` trains it (``--no-channels-last``: contiguous, as before
2026-11-29; the ``channels_last`` column says which).

Usage:
    python benchmarks/bench_train_memory.py --device cuda                        # 4x240x240x155, all four configs
    python benchmarks/bench_train_memory.py --shape 4,96,96,64 --configs bf16,bf16+ckpt
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

CONFIGS = ("fp32", "bf16", "fp16", "fp32+ckpt", "bf16+ckpt", "fp16+ckpt")
DEFAULT_CONFIGS = "fp32,bf16,fp32+ckpt,bf16+ckpt"
COLUMNS = (
    "timestamp", "config", "precision", "checkpointing", "channels_last", "shape", "batch", "channels", "classes", "peak_bytes",
    "method", "device", "planned_bytes", "planner_error", "step_seconds", "calibration", "torch_version",
)  # fmt: skip
GOAL_BYTES = 8e9  # bf16 + checkpointing at 4x240x240x155
GOAL_RATIO = 0.45  # bf16 + checkpointing against fp32
GOAL_ERROR = 0.15  # planner error on every row
SAFETY = 0.85  # run a configuration only if its planned peak is below this share of the available memory


def timed_step_setup(shape, classes, channels, device, precision, checkpointing, channels_last, timing_file):
    """:func:`~medseg_mem.training.calibration_step.training_setup`, its step timed into ``timing_file`` (seconds)."""
    import torch

    from medseg_mem.training.calibration_step import training_setup

    step = training_setup(shape, classes, channels, device, precision, checkpointing, channels_last)

    def run():
        start = time.perf_counter()
        loss = step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        Path(timing_file).write_text(json.dumps(time.perf_counter() - start))
        return loss

    return run


def parse_config(name):
    """``bf16+ckpt`` -> ``("bf16", True)``."""
    precision, _, lever = name.partition("+")
    return precision, lever == "ckpt"


def measure(args, precision, checkpointing):
    """``(MemoryReading, step seconds)`` of one training step in a measured process."""
    from medseg_mem.memory.measure import measure_peak

    with tempfile.TemporaryDirectory() as folder:
        timing_file = str(Path(folder) / "seconds.json")
        setup_args = ((args.batch, *args.shape), args.classes, args.channels, args.device, precision, checkpointing)
        reading = measure_peak(timed_step_setup, (*setup_args, args.channels_last, timing_file), args.device, grad=True)
        return reading, json.loads(Path(timing_file).read_text())


def planned_step(args, precision, checkpointing):
    """The planner's training prediction for the measured step: ``(bytes, calibration key)``.

    The measured step has no data loader, so the loader's host bytes (part of a CPU plan) are left out.
    """
    from medseg_mem.core.config import ModelConfig, TrainConfig
    from medseg_mem.memory.calibration import cached_calibration
    from medseg_mem.memory.planner import plan_variant

    from medseg_mem.training.calibration_step import training_setup

    calibration = cached_calibration(args.calibration, args.device, announce=print, mode="training",
                                     precision=precision, checkpointing=checkpointing,
                                     channels_last=args.channels_last, training_setup=training_setup)  # fmt: skip
    train = TrainConfig(batch_size=args.batch, precision=precision, checkpointing=checkpointing, workers=0,
                        cache_bytes=0, channels_last=args.channels_last)  # fmt: skip
    plan = plan_variant(
        "full", args.shape, args.classes, ModelConfig(channels=args.channels), train, calibration=calibration,
        device=args.device, validation=False,  # one step, as measured
    )  # fmt: skip
    host = 0 if args.device.startswith("cuda") else plan.host_bytes
    return plan.predicted_bytes - host, calibration.key


def make_row(args, name, reading, seconds, planned):
    """One CSV row (a dict over :data:`COLUMNS`)."""
    import torch

    precision, checkpointing = parse_config(name)
    return dict(
        timestamp=datetime.now(timezone.utc).isoformat(timespec="seconds"), config=name, precision=precision,
        checkpointing=checkpointing, channels_last=args.channels_last, shape="x".join(map(str, args.shape)), batch=args.batch,
        channels="-".join(map(str, args.channels)), classes=args.classes, peak_bytes=reading.peak_bytes,
        method=reading.method, device=reading.device, planned_bytes=planned[0],
        planner_error=round(abs(planned[0] - reading.peak_bytes) / reading.peak_bytes, 4),
        step_seconds=round(seconds, 2), calibration=planned[1], torch_version=torch.__version__,
    )  # fmt: skip


def append_row(path: Path, row, columns=COLUMNS) -> None:
    """Append ``row`` to the CSV at ``path`` (header of ``columns`` written for a new file), atomically.

    Raises:
        SystemExit: if ``path`` exists with other columns.
    """
    from medseg_mem.core.files.atomic import write_text_atomic

    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if old and old.splitlines()[0] != ",".join(columns):
        raise SystemExit(f"{path} has other columns than {', '.join(columns)}; pass --out NEW.csv")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    if not old:
        writer.writeheader()
    writer.writerow(row)
    write_text_atomic(path, old + buffer.getvalue())


def run_config(args, name, budget):
    """Plan, then measure, one configuration; return its row (``None`` when skipped as infeasible)."""
    from medseg_mem.core.units import format_bytes

    precision, checkpointing = parse_config(name)
    planned = planned_step(args, precision, checkpointing)
    if planned[0] > SAFETY * budget:
        print(f"{name:<10} skipped: planned {format_bytes(planned[0])} > {SAFETY:.0%} of {format_bytes(budget)}")
        return None
    reading, seconds = measure(args, precision, checkpointing)
    row = make_row(args, name, reading, seconds, planned)
    append_row(args.out, row)
    print(f"{name:<10} {gigabytes(row['peak_bytes']):>10} {gigabytes(planned[0]):>10} {row['planner_error']:>7.1%} "
          f"{seconds:>9.1f}  {row['method']}", flush=True)  # fmt: skip
    return row


def gigabytes(n_bytes) -> str:
    """``1234567890`` -> ``1.235 GB`` (three decimals: the planner errors are of a few MB)."""
    return f"{n_bytes / 1e9:.3f} GB"


def report_goals(rows) -> None:
    """Print the goals (bf16+ckpt <= 8 GB and <= 0.45x fp32; planner within 15 %) and whether they were met."""
    from medseg_mem.core.units import format_bytes

    peaks = {row["config"]: row["peak_bytes"] for row in rows}
    print("goals (set for one 4x240x240x155 step; at other sizes the fixed weights and Adam states weigh more):")
    if "bf16+ckpt" in peaks:
        verdict = "met" if peaks["bf16+ckpt"] <= GOAL_BYTES else "NOT met"
        print(f"  bf16+ckpt <= {format_bytes(GOAL_BYTES)}: {gigabytes(peaks['bf16+ckpt'])}, {verdict}")
    if "bf16+ckpt" in peaks and "fp32" in peaks:
        ratio = peaks["bf16+ckpt"] / peaks["fp32"]
        print(f"  bf16+ckpt <= {GOAL_RATIO}x fp32: {ratio:.3f}x, {'met' if ratio <= GOAL_RATIO else 'NOT met'}")
    worst = max((row["planner_error"] for row in rows), default=0.0)
    print(f"  planner error <= {GOAL_ERROR:.0%} on every row: worst {worst:.1%}, "
          f"{'met' if worst <= GOAL_ERROR else 'NOT met'}")  # fmt: skip


def parse_args(argv=None):
    """Command-line options; ``--shape``, ``--channels`` and ``--configs`` are checked here."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--shape", default="4,240,240,155", help="image C,X,Y,Z [4,240,240,155]")
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--channels", default="32,64,128,256,512", help="U-Net widths [32,64,128,256,512]")
    parser.add_argument("--batch", type=int, default=1, help="volumes per step [1]")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="channels-last network, as `medseg-mem run` trains [on]")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help=f"some of {', '.join(CONFIGS)} [{DEFAULT_CONFIGS}]")
    parser.add_argument("--out", type=Path, help="CSV to append to [benchmarks/results/train_memory_<device>.csv]")
    parser.add_argument("--calibration", type=Path, help="a calibration file [the user's cache]")
    args = parser.parse_args(argv)
    try:
        args.shape, args.channels = _ints(args.shape, 4), _ints(args.channels, 2)
    except ValueError:
        parser.error(f"--shape must be four positive integers C,X,Y,Z and --channels at least two widths; "
                     f"got {args.shape!r} and {args.channels!r}")  # fmt: skip
    args.configs = [c for c in args.configs.split(",") if c]
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown or not args.configs or args.classes < 2 or args.batch < 1:
        parser.error(f"--configs must name some of {', '.join(CONFIGS)} (got {unknown or 'none'}); "
                     f"--classes >= 2 and --batch >= 1")  # fmt: skip
    args.out = args.out or Path(f"benchmarks/results/train_memory_{args.device}.csv")
    return args


def _ints(text, at_least):
    """``"4,96,96,64"`` -> ``(4, 96, 96, 64)``; ``ValueError`` unless ``at_least`` (exactly 4 for a shape) positives."""
    values = tuple(int(part) for part in text.split(","))
    if len(values) < at_least or (at_least == 4 and len(values) != 4) or min(values) < 1:
        raise ValueError(text)
    return values


def main(argv=None) -> None:
    import torch

    from medseg_mem.memory.planner import default_budget
    from medseg_mem.core.units import format_bytes

    args = parse_args(argv)
    budget, source = default_budget(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, budget {format_bytes(budget)} ({source}); "
          f"one training step at {'x'.join(map(str, args.shape))}, batch {args.batch}, {args.classes} classes, "
          f"widths {'-'.join(map(str, args.channels))}, {'channels-last' if args.channels_last else 'contiguous'}",
          flush=True)  # fmt: skip
    start = time.perf_counter()
    print(f"{'config':<10} {'peak':>10} {'planned':>10} {'error':>7} {'step (s)':>9}  method")
    rows = [row for row in (run_config(args, name, budget) for name in args.configs) if row is not None]
    report_goals(rows)
    print(f"done in {time.perf_counter() - start:.0f} s; rows in {args.out}")


if __name__ == "__main__":
    main()
