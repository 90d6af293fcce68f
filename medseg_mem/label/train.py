"""The train task of one served variant: train on the labels the server has received, then serve the new run.

MONAI Label runs it in a subprocess of its own (``POST /train/<variant>``, or ``POST /train/`` for every variant);
what it prints is what ``GET /train/`` shows in ``details``. The request's ``steps`` (default
:data:`DEFAULT_STEPS`; 3D Slicer shows it as the task's option) is the budget of each stage. The work is
:func:`~medseg_mem.label.retrain.retrain`; the new run is published (:func:`~medseg_mem.label.served.publish`), so
the next inference of the variant uses it; the run that was served stays as it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict

from monailabel.interfaces.tasks.train import TrainTask

from medseg_mem.label.retrain import retrain
from medseg_mem.label.served import current_run, publish

DEFAULT_STEPS = 50


class RetrainTask(TrainTask):
    """Train ``variant`` again on the labelled scans of the datastore (``final`` labels).

    Args:
        app_dir: the app folder; new runs go under ``<app_dir>/work``.
        variant: ``full``, ``patch`` or ``cascade``.
        initial: the run folder served until a train task publishes another.
    """

    def __init__(self, app_dir: Path, variant: str, initial: Path) -> None:
        super().__init__(f"train medseg-mem {variant} on the labels saved so far, then serve the new run")
        self.app_dir, self.variant, self.initial = Path(app_dir), variant, Path(initial)

    def config(self) -> Dict[str, int]:
        return {"steps": DEFAULT_STEPS}

    def __call__(self, request, datastore) -> Dict[str, object]:
        cases = [(Path(item["image"]), Path(item["label"])) for item in datastore.datalist()]
        served = current_run(self.app_dir, self.variant, self.initial)
        steps = int(request.get("steps", DEFAULT_STEPS))
        print(f"[{self.variant}] training on {len(cases)} labelled scan(s), {steps} step(s) per stage, "
              f"with the settings of {served}", flush=True)  # fmt: skip
        run = retrain(served, cases, self.app_dir / "work", steps, echo=lambda line: print(line, flush=True))
        publish(self.app_dir, self.variant, run)
        print(f"[{self.variant}] now serving {run}", flush=True)
        return {"variant": self.variant, "run": str(run), "cases": len(cases), "steps": steps}
