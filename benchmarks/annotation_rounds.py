"""Annotation rounds on real data (issue 27): does fine-tuning save CPU time, and does ``suggest`` save annotations?

The loop a specialist runs, with MSD Task04_Hippocampus's ground truth standing in for the corrections: start
with ``--initial`` labelled training cases (a fixed test split and validation split beside them, an unlabelled
pool of ``--pool`` cases); each round ``--per-round`` cases of the pool are "corrected" (their ground-truth
labels join the task folder) and added to the prepared dataset with ``prepare --add``; then a model trains and is
tested on the fixed test split. Arms, per seed, all starting from one round-0 model trained from scratch:

* ``suggest+finetune``: ``suggest`` (``--score``) picks the cases with the previous round's model; the model is
  fine-tuned from the previous round's run (``run --init-from``) for ``--finetune-fraction`` of the budget.
* ``random+finetune``: the cases are drawn at random; fine-tuned likewise.
* ``random+scratch``: the very same cases as ``random+finetune`` (one shared prepared dataset), trained from
  random weights for the whole ``--budget``.

Budgets are CPU seconds of this process (``time.process_time``, passed to ``run`` as its clock, so
``--time-limit`` stops training at a CPU budget; one torch thread). The machine may be loaded by other work: CPU
time is what such load changes least, but it still changes cache and memory-bandwidth contention; say so with the
figures. Writes one row per (seed, round, arm) to ``--out`` (CSV) and the runs' rows to ``<work>/results.csv``.

Example (about 12 CPU-minutes per seed; run seeds as separate processes to use two cores)::

    python benchmarks/annotation_rounds.py --seed 0 --out benchmarks/results/annotation_rounds_seed0.csv
    python benchmarks/annotation_rounds.py --report benchmarks/results/annotation_rounds_seed*.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TASK = ROOT.parent / "shared" / "data" / "Task04_Hippocampus"
FIELDS = ("seed", "round", "labelled", "arm", "train_cpu_seconds", "cumulative_cpu_seconds", "train_steps",
          "suggest_cpu_seconds", "mean_dice", "dice_anterior", "dice_posterior", "run_id", "added")


def arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", type=Path, default=TASK)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder [/tmp/annotation-rounds-<seed>]")
    parser.add_argument("--seed", type=int, default=0, help="draws the initial cases, the pool, the random picks "
                                                             "and the training seed")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--initial", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=5)
    parser.add_argument("--pool", type=int, default=40)
    parser.add_argument("--test", type=int, default=20, help="fixed test cases (the same for every seed)")
    parser.add_argument("--val", type=int, default=5, help="fixed validation cases")
    parser.add_argument("--budget", type=float, default=60.0, help="CPU seconds of a training from scratch")
    parser.add_argument("--finetune-fraction", type=float, default=0.5, help="share of --budget a fine-tuning gets")
    parser.add_argument("--channels", default="8,16,32,64")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (narrow nets, as the embedded "
                                                                "default's profile)")
    parser.add_argument("--score", default="entropy", choices=("entropy", "mirror"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "annotation_rounds.csv")
    parser.add_argument("--report", nargs="*", type=Path, default=None, help="only print the table of these CSVs")
    return parser.parse_args(argv)


def split_cases(task: Path, args) -> Dict[str, List[str]]:
    """Fixed test/val (split seed 0); initial labelled cases and the pool drawn with ``args.seed``."""
    meta = json.loads((task / "dataset.json").read_text())
    ids = sorted(Path(entry["image"]).name[: -len(".nii.gz")] for entry in meta["training"])
    fixed = np.random.default_rng(0).permutation(ids)
    test, val, rest = fixed[: args.test], fixed[args.test : args.test + args.val], fixed[args.test + args.val :]
    rest = np.random.default_rng(1000 + args.seed).permutation(rest)
    return {"test": sorted(test), "val": sorted(val), "train": sorted(rest[: args.initial]),
            "pool": sorted(rest[args.initial : args.initial + args.pool])}  # fmt: skip


def write_task(source: Path, folder: Path, ids: List[str]) -> Path:
    """A task folder listing ``ids`` (copies of the source's files: a task's files must lie inside it): the cases
    labelled so far."""
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        for case in ids:
            link = folder / sub / f"{case}.nii.gz"
            if not link.exists():
                shutil.copy2(source / sub / f"{case}.nii.gz", link)
    meta = json.loads((source / "dataset.json").read_text())
    meta["training"] = [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in ids]
    meta["numTraining"] = len(ids)
    (folder / "dataset.json").write_text(json.dumps(meta, indent=1))
    return folder


def train(data: Path, work: Path, args, budget: float, init_from: str = None):
    """One run (``full``) to ``budget`` CPU seconds; returns its :class:`VariantResult`."""
    from medseg_mem.core.changes import RunChanges
    from medseg_mem.core.config import RunRequest
    from medseg_mem.core.names import MAX_STEPS
    from medseg_mem.runner.run import run_variants

    changes = RunChanges.of(channels=tuple(int(c) for c in args.channels.split(",")), steps=MAX_STEPS,
                            time_limit=budget / 60.0, seed=args.seed, val_every=20, device="cpu", lr=args.lr)
    request = RunRequest(("full",), data, work / "results.csv", work / "runs", None, changes, progress=False,
                         init_from=init_from)  # fmt: skip
    (result,) = run_variants(request, echo=lambda line: log(work, line), clock=time.process_time)
    return result


def skip_memory_measurement() -> None:
    """This benchmark measures Dice against CPU time: the peak-memory measurement of each run (a process of its own,
    ~10 CPU-s on a loaded machine) is left out, and its rows say so (``memory_method``; peak 0)."""
    import medseg_mem.runner.run as runner
    from medseg_mem.memory.measure import MemoryReading

    runner.measure_variant_memory = lambda *_, **__: MemoryReading(0, "not measured (annotation_rounds.py)", "cpu")


def log(work: Path, line: str) -> None:
    with open(work / "log.txt", "a", encoding="utf-8") as stream:
        stream.write(line + "\n")


def row(args, round_, labelled, arm, result, cumulative, suggest_cpu=0.0, added=()) -> dict:
    dice = [float(d) for d in result.evaluation.dice]
    return {"seed": args.seed, "round": round_, "labelled": labelled, "arm": arm,
            "train_cpu_seconds": round(result.train_seconds, 1), "cumulative_cpu_seconds": round(cumulative, 1),
            "train_steps": result.train_steps, "suggest_cpu_seconds": round(suggest_cpu, 1),
            "mean_dice": round(float(np.mean(dice)), 4), "dice_anterior": round(dice[0], 4),
            "dice_posterior": round(dice[1], 4), "run_id": result.run_id, "added": " ".join(added)}  # fmt: skip


def add(arm_task: Path, source: Path, prepared: Path, labelled: List[str]) -> None:
    from medseg_mem.data.add import add_cases

    write_task(source, arm_task, labelled)
    add_cases(arm_task, prepared, progress=False, warn=lambda line: None)


def rounds(args) -> List[dict]:
    import torch

    from medseg_mem.core.prepare_config import PrepareConfig
    from medseg_mem.data.prepare import prepare
    from medseg_mem.predict.suggest import rank_scans

    torch.set_num_threads(1)
    skip_memory_measurement()
    work = args.work or Path(f"/tmp/annotation-rounds-{args.seed}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cases = split_cases(args.task, args)
    splits = work / "splits.json"
    splits.write_text(json.dumps([{k: cases[k] for k in ("train", "val", "test")}]))
    fixed = cases["val"] + cases["test"]
    tasks = {arm: write_task(args.task, work / f"task-{arm}", cases["train"] + fixed) for arm in ("suggest", "random")}
    prepared = {arm: work / f"prepared-{arm}" for arm in tasks}
    for arm, folder in tasks.items():
        prepare(PrepareConfig(task_dir=folder, out_dir=prepared[arm], splits=splits), progress=False,
                warn=lambda line: None)  # fmt: skip
    rows, labelled = [], {arm: list(cases["train"]) for arm in tasks}
    base = train(prepared["random"], work, args, args.budget)
    rows.append(row(args, 0, args.initial, "round0-scratch", base, base.train_seconds))
    last = {"suggest+finetune": base, "random+finetune": base}
    spent = {"suggest+finetune": base.train_seconds, "random+finetune": base.train_seconds,
             "random+scratch": base.train_seconds}  # fmt: skip
    pool = {arm: list(cases["pool"]) for arm in tasks}
    rng = np.random.default_rng(2000 + args.seed)
    fine_budget = args.budget * args.finetune_fraction
    for round_ in range(1, args.rounds + 1):
        started = time.process_time()
        scans = [args.task / "imagesTr" / f"{c}.nii.gz" for c in pool["suggest"]]
        ranked = rank_scans(work / "runs" / last["suggest+finetune"].run_id, scans, args.per_round, args.score,
                            device="cpu", warn=lambda line: None)  # fmt: skip
        suggest_cpu = time.process_time() - started
        picks = {"suggest": [r.case for r in ranked[: args.per_round]],
                 "random": sorted(rng.choice(pool["random"], args.per_round, replace=False).tolist())}  # fmt: skip
        for arm in tasks:
            labelled[arm] += picks[arm]
            pool[arm] = [c for c in pool[arm] if c not in picks[arm]]
            add(tasks[arm], args.task, prepared[arm], labelled[arm] + fixed)
        count = args.initial + round_ * args.per_round
        for arm, data in (("suggest+finetune", "suggest"), ("random+finetune", "random")):
            result = train(prepared[data], work, args, fine_budget, init_from=last[arm].run_id)
            spent[arm] += result.train_seconds
            last[arm] = result
            rows.append(row(args, round_, count, arm, result, spent[arm], suggest_cpu if data == "suggest" else 0,
                            picks[data]))  # fmt: skip
        scratch = train(prepared["random"], work, args, args.budget)
        spent["random+scratch"] += scratch.train_seconds
        rows.append(row(args, round_, count, "random+scratch", scratch, spent["random+scratch"], 0, picks["random"]))
        print(f"seed {args.seed} round {round_}: " + ", ".join(f"{r['arm']} {r['mean_dice']:.3f}"
                                                             for r in rows[-3:]), flush=True)  # fmt: skip
    return rows


def write_rows(path: Path, rows: List[dict]) -> None:
    from medseg_mem.core.files.atomic import write_text_atomic
    import io

    stream = io.StringIO()
    writer = csv.DictWriter(stream, FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, stream.getvalue())


def report(paths: List[Path]) -> str:
    """Per round and arm: labelled cases, CPU seconds of the round's training, and mean test Dice (mean and
    spread over the seeds)."""
    import pandas as pd

    frame = pd.concat([pd.read_csv(p) for p in paths])
    seeds = sorted(frame.seed.unique())
    table = frame.groupby(["round", "labelled", "arm"], sort=True).agg(
        train_cpu=("train_cpu_seconds", "mean"), cumulative_cpu=("cumulative_cpu_seconds", "mean"),
        dice_mean=("mean_dice", "mean"), dice_min=("mean_dice", "min"), dice_max=("mean_dice", "max"),
        steps=("train_steps", "mean")).reset_index()  # fmt: skip
    lines = [f"seeds {', '.join(map(str, seeds))}; mean test Dice (anterior, posterior averaged) over the seeds, "
             "[min, max]", "",
             "| round | labelled | arm | train CPU s | cumulative CPU s | steps | mean Dice [min, max] |",
             "|---:|---:|---|---:|---:|---:|---|"]  # fmt: skip
    for r in table.itertuples():
        lines.append(f"| {r.round} | {r.labelled} | {r.arm} | {r.train_cpu:.0f} | {r.cumulative_cpu:.0f} | "
                     f"{r.steps:.0f} | {r.dice_mean:.3f} [{r.dice_min:.3f}, {r.dice_max:.3f}] |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = arguments(argv)
    if args.report is not None:
        print(report(args.report))
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    started = time.time()
    rows = rounds(args)
    write_rows(args.out, rows)
    print(report([args.out]))
    print(f"wall {time.time() - started:.0f} s, process CPU {time.process_time():.0f} s (device cpu, torch "
          f"{__import__('torch').__version__}, 1 thread; machine shared with other work)", file=sys.stderr)


if __name__ == "__main__":
    main()
