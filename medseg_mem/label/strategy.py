"""The next-sample strategy: offer the unlabelled scan the served model is least sure of.

Each unlabelled scan of the datastore is segmented by a served variant (the request's ``model``, else the first
served) and scored by :func:`uncertainty`; ``POST /activelearning/<name>`` answers the id of the highest score
(3D Slicer's "Next Sample"). ``medseg_mem.predict.suggest`` (issue 27, item 3) is meant to take over the scoring.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Mapping

import torch
from monailabel.interfaces.tasks.strategy import Strategy

from medseg_mem.label.served import current_run
from medseg_mem.predict import Segmenter
from medseg_mem.variants.trained_run import open_trained_run


class MostUncertain(Strategy):
    """Next sample = the unlabelled scan of the highest :func:`uncertainty` under a served run.

    Args:
        app_dir: the app folder (where published runs are recorded).
        served: ``{variant: run folder served at start}``.
    """

    def __init__(self, app_dir: Path, served: Mapping[str, Path]) -> None:
        super().__init__("the unlabelled scan the model is least sure of (mean entropy in its foreground)")
        self.app_dir, self.served = Path(app_dir), dict(served)

    def __call__(self, request, datastore) -> Dict[str, object]:
        ids = sorted(datastore.get_unlabeled_images())
        if not ids:
            return {}
        variant = request.get("model") if request.get("model") in self.served else next(iter(self.served))
        segmenter = Segmenter(open_trained_run(current_run(self.app_dir, variant, self.served[variant])),
                              torch.device("cpu"))  # fmt: skip
        scores = {image: uncertainty(segmenter, Path(datastore.get_image_uri(image))) for image in ids}
        best = max(ids, key=lambda image: scores[image])
        return {"id": best, "uncertainty": scores[best]}


def uncertainty(segmenter: Segmenter, scan: Path) -> float:
    """Mean voxel entropy (nats) of the class probabilities inside the predicted foreground, over the whole
    preprocessed scan when nothing is predicted there."""
    probabilities = segmenter.probabilities(segmenter.preprocess(scan)["image"], scan)
    entropy = -(probabilities * probabilities.clamp_min(1e-12).log()).sum(0)
    foreground = probabilities.argmax(0) > 0
    return float(entropy[foreground].mean() if foreground.any() else entropy.mean())
