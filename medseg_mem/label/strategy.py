"""The next-sample strategy: offer the unlabelled scan the served model is least sure of.

The unlabelled scans of the datastore are ranked by ``suggest``'s ranking
(:func:`~medseg_mem.predict.suggest.rank_scans`, its default score: the mean voxel entropy inside the predicted
foreground) under the run a served variant serves now (the request's ``model``, else the first served);
``POST /activelearning/<name>`` answers the first (3D Slicer's "Next Sample").
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Mapping

from monailabel.interfaces.tasks.strategy import Strategy

from medseg_mem.label.served import current_run
from medseg_mem.predict.suggest import rank_scans


class MostUncertain(Strategy):
    """Next sample = the unlabelled scan ``suggest`` ranks first under a served run.

    Args:
        app_dir: the app folder (where published runs are recorded).
        served: ``{variant: run folder served at start}``.
    """

    def __init__(self, app_dir: Path, served: Mapping[str, Path]) -> None:
        super().__init__("the unlabelled scan the model is least sure of (medseg-mem suggest's ranking)")
        self.app_dir, self.served = Path(app_dir), dict(served)

    def __call__(self, request, datastore) -> Dict[str, object]:
        ids = sorted(datastore.get_unlabeled_images())
        if not ids:
            return {}
        variant = request.get("model") if request.get("model") in self.served else next(iter(self.served))
        run = current_run(self.app_dir, variant, self.served[variant])
        scans = {Path(datastore.get_image_uri(image)).resolve(): image for image in ids}
        first = rank_scans(run, list(scans), count=1, device="cpu", warn=print)[0]
        return {"id": scans[first.scan.resolve()], "uncertainty": first.score, "model": variant}
