"""The MONAI Label app: one infer and one train task per served run, and the next-sample strategy.

MONAI Label builds it from ``<app>/main.py`` (written by :func:`~medseg_mem.label.server.write_app`), with
``--conf runs <run folder>[,<run folder>...]``: the trained runs to serve, one per variant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict

from monailabel.interfaces.app import MONAILabelApp

from medseg_mem import __version__
from medseg_mem.core.errors import MedsegError
from medseg_mem.label.infer import RunInfer, class_labels
from medseg_mem.label.served import RUNS_KEY, served_runs
from medseg_mem.label.strategy import MostUncertain
from medseg_mem.label.train import RetrainTask
from medseg_mem.variants.trained_run import open_trained_run

#: The strategy's name (``POST /activelearning/<name>``).
STRATEGY = "uncertain"


class MedsegMemApp(MONAILabelApp):
    """Serve medseg-mem runs: models and trainers named by variant, strategy :data:`STRATEGY`."""

    def __init__(self, app_dir: str, studies: str, conf: Dict[str, str]) -> None:
        if not (conf or {}).get(RUNS_KEY):
            raise MedsegError(f"--conf {RUNS_KEY}: name the trained run folder(s) to serve, separated by commas")
        self.served = served_runs([Path(run) for run in conf[RUNS_KEY].split(",") if run])
        first = open_trained_run(next(iter(self.served.values())))
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="medseg-mem",
                         description=f"medseg-mem runs of {first.dataset}: {', '.join(self.served)}",
                         version=__version__, labels=class_labels(first.class_names))  # fmt: skip

    def init_infers(self):
        return {variant: RunInfer(Path(self.app_dir), variant, run) for variant, run in self.served.items()}

    def init_trainers(self):
        return {variant: RetrainTask(Path(self.app_dir), variant, run) for variant, run in self.served.items()}

    def init_strategies(self):
        return {STRATEGY: MostUncertain(Path(self.app_dir), self.served)}
