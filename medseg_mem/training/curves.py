"""Training curves of one stage: ``log.csv``, ``progress.png`` and, when ``tensorboard`` is installed, its events.

Every stage (and every fold model of the cascade's predicted guidance) keeps in its folder:

``log.csv``
    one row per training step: ``step``, ``seconds`` (the stage's training time when the step ended, the clock of
    ``--time-limit``), ``loss`` (this process's loss of the step; under torchrun rank 0's), ``lr``, and on the
    steps that validated ``val_mean_dice`` and ``val_dice_<class>`` per foreground class (empty elsewhere; ``nan``
    where no validation case holds the class).
``progress.png``
    loss and validation Dice against step and against training time
    (:func:`~medseg_mem.training.progress_plot.plot_progress`), like nnU-Net's ``progress.png``.
``tensorboard/``
    the same scalars as TensorBoard event files, only when ``tensorboard`` is importable
    (``pip install 'medseg-mem[tensorboard]'``); without it nothing is written and nothing is said.

Cost per step: the step's numbers are buffered (the loss stays a tensor, so no device synchronisation per step)
and appended to ``log.csv`` in one write at each validation (and every :data:`FLUSH_EVERY` steps);
``progress.png`` is drawn at the end of the stage and at a validation only when :data:`PLOT_EVERY` seconds have
passed since the last drawing. Nothing here draws a random number, so the run's weights do not depend on it.

A resumed stage continues the same files: rows after the step it resumes from (written after its last
checkpoint) are dropped first, so no step appears twice; TensorBoard's ``purge_step`` does the same for events.

Example:
    >>> with StageLog.open(Path("runs/<id>/patch"), ["left", "right"], resumed_step=0) as log:  # doctest: +SKIP
    ...     log.step(1, 0.4, loss, 3e-4)
    ...     log.validation(1, [0.2, 0.3], 0.25)
"""

from __future__ import annotations

import csv
import importlib.util
import io
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from medseg_mem.core.files.atomic import write_text_atomic, write_error

LOG_NAME = "log.csv"
PLOT_NAME = "progress.png"
EVENTS_FOLDER = "tensorboard"
BASE_COLUMNS = ("step", "seconds", "loss", "lr", "val_mean_dice")
#: Buffered steps are written at least this often, so a long gap between validations does not grow the buffer.
FLUSH_EVERY = 1000
#: Seconds (real time) between two drawings of ``progress.png`` at validations; the end of a stage always draws.
PLOT_EVERY = 60.0


def columns(class_names: Sequence[str]) -> List[str]:
    """The header of ``log.csv``: :data:`BASE_COLUMNS` then ``val_dice_<name>`` per foreground class.

    Example:
        >>> columns(["left", "right"])[-2:]
        ['val_dice_left', 'val_dice_right']
    """
    return [*BASE_COLUMNS, *(f"val_dice_{name}" for name in class_names)]


def tensorboard_available() -> bool:
    """True when the optional ``tensorboard`` package can be imported (``medseg-mem[tensorboard]``)."""
    return importlib.util.find_spec("tensorboard") is not None


class StageLog:
    """The curves of one stage (see the module docstring); a context manager that writes what is left on exit.

    Args:
        folder: the stage folder (``<run>/<stage>``, or a fold model's ``<run>/stage1/folds/<i>``).
        class_names: the foreground classes, in label order (the ``val_dice_<name>`` columns).
        events: a TensorBoard ``SummaryWriter`` or ``None``.
    """

    def __init__(self, folder: Path, class_names: Sequence[str], events: Any = None) -> None:
        self.folder, self.names, self.events = Path(folder), list(class_names), events
        self.path = self.folder / LOG_NAME
        self._steps: List[tuple] = []  # (step, seconds, loss tensor, lr), not yet written
        self._validated: Dict[int, List[float]] = {}  # step -> [mean, per class...] of buffered steps
        self._plotted = time.monotonic()

    @classmethod
    def open(cls, folder: Path, class_names: Sequence[str], resumed_step: int = 0) -> "StageLog":
        """Start the stage's log, or continue it from ``resumed_step`` (rows after it are dropped).

        Raises:
            WriteError: ``log.csv`` cannot be written, naming it.
        """
        log = cls(folder, class_names, _writer(Path(folder), resumed_step))
        kept = _rows_up_to(log.path, resumed_step, columns(class_names)) if resumed_step > 0 else []
        write_text_atomic(log.path, _csv_text([columns(class_names), *kept]))
        return log

    def step(self, step: int, seconds: float, loss: torch.Tensor, lr: float) -> None:
        """Buffer one training step (no device synchronisation: ``loss`` is read at the next write)."""
        if len(self._steps) >= FLUSH_EVERY:
            self.flush()  # the steps before this one: a validation of this step still finds it buffered
        self._steps.append((step, seconds, loss.detach(), lr))

    def validation(self, step: int, dice: Sequence[float], mean: float) -> None:
        """Record the validation of the last buffered ``step`` (its mean and per-class Dice), append the buffer to
        ``log.csv``, and redraw ``progress.png`` if :data:`PLOT_EVERY` seconds have passed."""
        self._validated[step] = [float(mean), *map(float, dice)]
        self.flush()
        if self.events is not None:
            self.events.add_scalar("val/mean_dice", float(mean), step)
            for name, value in zip(self.names, dice):
                self.events.add_scalar(f"val/dice_{name}", float(value), step)
            self.events.flush()
        if time.monotonic() - self._plotted >= PLOT_EVERY:
            self.plot()

    def flush(self) -> None:
        """Append the buffered steps to ``log.csv`` (one write) and to the TensorBoard events."""
        if not self._steps:
            return
        losses = torch.stack([loss.float() for _, _, loss, _ in self._steps]).cpu().tolist()  # one synchronisation
        rows = [self._row(step, seconds, loss, lr) for (step, seconds, _, lr), loss in zip(self._steps, losses)]
        self._append(_csv_text(rows))
        if self.events is not None:
            for (step, _, _, lr), loss in zip(self._steps, losses):
                self.events.add_scalar("train/loss", loss, step)
                self.events.add_scalar("train/lr", lr, step)
        self._steps, self._validated = [], {}

    def _row(self, step: int, seconds: float, loss: float, lr: float) -> list:
        scores = self._validated.get(step, [""] * (1 + len(self.names)))
        return [step, f"{seconds:.3f}", _number(loss), f"{lr:.6g}", *map(_number, scores)]

    def _append(self, text: str) -> None:
        try:
            with open(self.path, "a", encoding="utf-8", newline="") as stream:
                stream.write(text)  # whole rows in one write: a crash loses rows, never half of one that stays
        except OSError as error:
            raise write_error(self.path, error.strerror or str(error)) from error

    def plot(self) -> None:
        """Draw ``progress.png`` from ``log.csv``."""
        from medseg_mem.training.progress_plot import plot_progress  # matplotlib only when a plot is drawn

        title = f"{self.folder.parent.name}/{self.folder.name}"
        plot_progress(read_log(self.path) or {}, title, self.folder / PLOT_NAME)
        self._plotted = time.monotonic()

    def close(self) -> None:
        """Write what is buffered, draw ``progress.png`` and close the TensorBoard events."""
        try:
            self.flush()
            self.plot()
        finally:
            if self.events is not None:
                self.events.close()

    def __enter__(self) -> "StageLog":
        return self

    def __exit__(self, kind, error, trace) -> None:
        if kind is None:
            self.close()
            return
        try:  # the stage failed: keep what it logged, but never hide its own error behind one of ours
            self.close()
        except Exception:  # noqa: BLE001 - the training's error is the one to report
            pass


def _writer(folder: Path, resumed_step: int):
    """A TensorBoard ``SummaryWriter`` in ``<folder>/tensorboard`` (events after ``resumed_step`` purged), or
    ``None`` when tensorboard is not installed."""
    if not tensorboard_available():
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(folder / EVENTS_FOLDER), purge_step=resumed_step + 1 if resumed_step else None)


def _rows_up_to(path: Path, step: int, header: List[str]) -> List[List[str]]:
    """The complete rows of an earlier ``log.csv`` up to ``step`` (none when it is missing or has other columns)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # a row cut short by a crash is dropped
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or rows[0] != header:
        return []
    return [row for row in rows[1:] if len(row) == len(header) and row[0].isdigit() and int(row[0]) <= step]


def _csv_text(rows: Sequence[Sequence[Any]]) -> str:
    stream = io.StringIO()
    csv.writer(stream, lineterminator="\n").writerows(rows)
    return stream.getvalue()


def _number(value: Any) -> str:
    """A float as CSV text: ``nan`` for NaN, six significant digits; empty and text pass through."""
    if isinstance(value, str):
        return value
    return "nan" if math.isnan(value) else f"{value:.6g}"


def read_log(path: Path) -> Optional[Dict[str, List[float]]]:
    """``log.csv`` as columns of floats (``nan`` where a cell is empty), or ``None`` when it has no rows."""
    with open(path, encoding="utf-8", newline="") as stream:
        rows = list(csv.DictReader(stream))
    if not rows:
        return None
    return {key: [float(row[key]) if row[key] not in ("", None) else math.nan for row in rows] for key in rows[0]}
