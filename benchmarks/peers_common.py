"""What the peer benchmarks share: medseg-mem's split, the training clock, test-set scoring and the results rows.

A peer (``peer_nnunet.py``, ``peer_monai_unet.py``) trains another tool's network on the split medseg-mem made
of a prepared task, within the same wall-clock budget, scores the test cases with medseg-mem's metric
(:func:`medseg_mem.inference.metrics.dice_per_class`, MONAI ``DiceMetric(include_background=False, ignore_empty=False)``
per class) and files one row per foreground class in the results CSV with ``source = peer``, so
``medseg-mem compare`` shows it beside ``full``, ``patch`` and ``cascade``. Everything a reader of the rows may
need beyond the CSV's columns (plans, batch size, epochs, time per iteration) goes to ``WORK/peer-runs/<run id>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, NoReturn, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
TASK = ROOT.parent / "shared" / "data" / "Task04_Hippocampus"
RESULTS = ROOT / "benchmarks" / "results" / "hippocampus_cpu.csv"
WORK = Path("medseg-work/hippocampus")  # the folder hippocampus.py prepares into: the very same split


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``PROG: error: ...``, exit 2), without the usage text."""

    def error(self, message: str) -> NoReturn:
        fail(self.prog, message)


def fail(prog: str, message: str) -> NoReturn:
    """Print ``PROG: error: MESSAGE`` on stderr and exit with status 2."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


def positive_minutes(text: str) -> float:
    """argparse type of ``--minutes``: a number of minutes above 0."""
    try:
        minutes = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of minutes above 0; got {text!r}") from None
    if not minutes > 0 or minutes == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of minutes above 0; got {text!r}")
    return minutes


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every peer has: the budget, where the task, the work folder and the results CSV are, the seed."""
    parser.add_argument("--minutes", type=positive_minutes, required=True,
                        help="training wall-clock budget (the same budget medseg-mem's runs get)")
    parser.add_argument("--task", type=Path, default=TASK, help="MSD task folder (read-only) [%(default)s]")
    parser.add_argument("--work", type=Path, default=WORK,
                        help="work folder: WORK/prepared is medseg-mem's prepared task and split [%(default)s]")
    parser.add_argument("--prepared", type=Path, default=None,
                        help="an already prepared folder to take the split from instead of WORK/prepared")
    parser.add_argument("--results", type=Path, default=RESULTS, help="results CSV to append to [%(default)s]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the sampling [%(default)s]")


def check_results(path: Path, prog: str) -> None:
    """Refuse an unwritable ``--results`` or a malformed results CSV before any training (one line, exit 2)."""
    from medseg_mem.core.errors import MedsegError
    from medseg_mem.core.files.writable import check_output_file
    from medseg_mem.report.results import read_results

    try:
        check_output_file(path, "--results")
        if path.is_file() and path.read_bytes().strip():
            read_results(path)
    except MedsegError as error:
        fail(prog, str(error))


def prepared_dataset(args: argparse.Namespace, prog: str):
    """medseg-mem's prepared task: ``--prepared`` if given, else ``WORK/prepared`` (prepared from ``--task`` once).

    A missing task folder is a one-line error (exit 2).
    """
    from medseg_mem.core.prepare_config import PrepareConfig
    from medseg_mem.data.prepare import prepare
    from medseg_mem.data.prepared import PreparedDataset

    folder = args.prepared or args.work / "prepared"
    if args.prepared is None and not (folder / "manifest.json").is_file():
        if not (args.task / "dataset.json").is_file():
            fail(prog, f"--task {args.task}: no MSD task there (dataset.json missing); give the task folder")
        prepare(PrepareConfig(task_dir=args.task, out_dir=folder), progress=False)
    return PreparedDataset.open(folder)


class BudgetClock:
    """The training wall-clock budget: started when made, read with :attr:`elapsed` and :meth:`fits`.

    :attr:`cpu_seconds` (this process's CPU time since the start, all threads) tells how much of the wall time
    the training really had when other jobs share the cores. :meth:`stop` freezes both readings.

    Example:
        >>> clock = BudgetClock(minutes=15)
        >>> clock.fits(60.0)  # would one more 60-s epoch end inside the budget?
        True
    """

    def __init__(self, minutes: float) -> None:
        self.budget_s = float(minutes) * 60.0
        self.started = time.perf_counter()
        self.cpu_started = time.process_time()
        self.frozen = None

    def stop(self) -> "BudgetClock":
        """Freeze :attr:`elapsed` and :attr:`cpu_seconds` at their values now (the training's end)."""
        self.frozen = (self.elapsed, self.cpu_seconds)
        return self

    @property
    def cpu_seconds(self) -> float:
        """CPU seconds this process used since the clock was started (until :meth:`stop`)."""
        return self.frozen[1] if self.frozen else time.process_time() - self.cpu_started

    @property
    def elapsed(self) -> float:
        """Seconds since the clock was started (until :meth:`stop`)."""
        return self.frozen[0] if self.frozen else time.perf_counter() - self.started

    @property
    def remaining(self) -> float:
        """Seconds of the budget left (0 once spent)."""
        return max(0.0, self.budget_s - self.elapsed)

    def spent(self) -> bool:
        """True once the budget is used up."""
        return self.elapsed >= self.budget_s

    def fits(self, seconds: float) -> bool:
        """True when ``seconds`` more work would still end inside the budget."""
        return self.elapsed + seconds <= self.budget_s


def training_peak():
    """A context manager whose ``peak_bytes`` is the resident memory its block adds at its peak (this process).

    medseg-mem's in-process reading (:class:`medseg_mem.memory.measure.InProcessPeak`, CPU: ``VmHWM`` reset
    through ``/proc/self/clear_refs``, minus ``VmRSS`` before the block): for a peer's training it counts the
    network, optimizer, data in memory and every activation, but not the interpreter and libraries loaded before.
    """
    from medseg_mem.memory.measure import InProcessPeak

    return InProcessPeak("cpu", resident_bytes=0)


def score_cases(segment: Callable, load: Callable, keys: Sequence[str], num_classes: int):
    """Segment and score each test case as medseg-mem's evaluation does; return an ``Evaluation``.

    The first case is segmented once untimed (warm-up), then every case is timed and its Dice per foreground
    class computed with :func:`medseg_mem.inference.metrics.dice_per_class`.

    Args:
        segment: ``segment(inputs)`` returns the label map of one case (array or tensor, the label's grid).
        load: ``load(key)`` returns ``(inputs, label)`` with ``label`` an integer array or tensor ``(..., X, Y, Z)``.
        keys: the test case ids.
        num_classes: classes including the background.

    Raises:
        ValueError: a prediction's grid differs from its label's.
    """
    import numpy as np
    import torch

    from medseg_mem.inference.metrics import dice_per_class
    from medseg_mem.runner.evaluation import Evaluation, timed

    scores, seconds = [], []
    with torch.inference_mode():
        segment(load(keys[0])[0])
        for key in keys:
            inputs, label = load(key)
            labels, elapsed = timed(segment, inputs, torch.device("cpu"))
            predicted, truth = (torch.as_tensor(np.asarray(a)) for a in (labels, label))
            if predicted.shape[-3:] != truth.shape[-3:]:
                raise ValueError(f"{key}: prediction grid {tuple(predicted.shape)} != label grid {tuple(truth.shape)}")
            scores.append(dice_per_class(predicted.reshape(1, 1, *predicted.shape[-3:]).long(),
                                         truth.reshape(1, 1, *truth.shape[-3:]).long(), num_classes))  # fmt: skip
            seconds.append(elapsed)
    dice = torch.cat(scores).mean(dim=0).tolist()
    return Evaluation(dice=dice, seconds_per_case=sum(seconds) / len(seconds), n_cases=len(keys))


@dataclass
class PeerRun:
    """One finished peer run: what the results rows and the details file say.

    Args:
        variant: the row's variant name, e.g. ``nnunet-3d_fullres`` (never a medseg-mem variant's name).
        evaluation: test Dice per foreground class and seconds per case.
        memory: peak inference memory on the largest test case (:func:`medseg_mem.memory.measure.measure_peak`).
        train_peak_bytes: resident memory the training added at its peak (:func:`training_peak`).
        train_steps: optimizer steps (iterations) done; train_seconds: the training's wall time.
        columns: further results columns (seed, channels, loss, inferer, overlap, ..., package_version).
        details: everything else worth keeping (plans, batch size, epochs, ...), written to the details file.
    """

    variant: str
    evaluation: object
    memory: object
    train_peak_bytes: int
    train_steps: int
    train_seconds: float
    columns: Dict[str, object] = field(default_factory=dict)
    details: Dict[str, object] = field(default_factory=dict)
    run_id: str = ""

    def __post_init__(self) -> None:
        from medseg_mem.report.results import new_run_id

        self.run_id = self.run_id or new_run_id(self.variant)


def peer_rows(run: PeerRun, dataset) -> List[dict]:
    """One results row per foreground class (``source = peer``), run-level columns repeated."""
    from medseg_mem.data.fingerprint import fingerprint
    from medseg_mem.report.results import utc_timestamp

    shared = {
        "run_id": run.run_id, "timestamp": utc_timestamp(), "dataset": dataset.name, "variant": run.variant,
        "dataset_fingerprint": fingerprint(dataset),
        "peak_memory_bytes": run.memory.peak_bytes, "memory_method": run.memory.method, "device": "cpu",
        "inference_seconds_per_case": run.evaluation.seconds_per_case, "train_steps": run.train_steps,
        "train_seconds": round(run.train_seconds, 2), "train_peak_memory_bytes": run.train_peak_bytes,
        "seed": "", "channels": "", "loss": "", "slab_size": "", "downsample": "",
        "n_test_cases": run.evaluation.n_cases, "package_version": "", "source": "peer",
        **run.columns,
    }  # fmt: skip
    names = dataset.class_names[1:]
    return [
        {**shared, "class_name": names[i], "class_index": i + 1, "dice": round(d, 6)}
        for i, d in enumerate(run.evaluation.dice)
    ]


def file_run(run: PeerRun, dataset, results: Path, work: Path, minutes: float) -> Tuple[Path, Path]:
    """Append the run's rows to ``results`` and write ``work/peer-runs/<run id>.json``; print one summary line.

    Returns:
        (the results CSV, the details file).
    """
    from medseg_mem.core.files.atomic import write_text_atomic
    from medseg_mem.core.units import format_bytes
    from medseg_mem.report.results import append_rows

    rows = peer_rows(run, dataset)
    append_rows(results, rows)
    details = {"run_id": run.run_id, "variant": run.variant, "budget_minutes": minutes,
               "prepared": str(dataset.root), "results": str(results), "row": rows[0], **run.details}  # fmt: skip
    path = work / "peer-runs" / f"{run.run_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(details, indent=2, default=str) + "\n")
    dice = ", ".join(f"{r['class_name']} {r['dice']:.3f}" for r in rows)
    print(f"[{run.variant}] test Dice {dice}; {run.train_steps} steps in {run.train_seconds:.0f} s; training peak "
          f"{format_bytes(run.train_peak_bytes)}, inference peak {format_bytes(run.memory.peak_bytes)} "
          f"({run.memory.method}), {run.evaluation.seconds_per_case:.3f} s/case; rows in {results}, details {path}")
    return results, path
