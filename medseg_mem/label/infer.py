"""The infer task of one served variant: medseg-mem's predict path on the scan MONAI Label hands over.

Each call segments ``request["image"]`` with the run the variant serves now
(:func:`~medseg_mem.label.served.current_run`: a run a train task published is used from the next call on) through
:class:`~medseg_mem.predict.Segmenter` and writes the label map as ``predict`` does (uint8, the scan's shape and
header, so its affine) into a temporary file, which MONAI Label sends back and deletes. The networks stay loaded
between calls and are loaded again only when the served run changes.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Dict, Tuple

import torch
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from medseg_mem.label.served import current_run
from medseg_mem.predict import Segmenter
from medseg_mem.predict.files import write_label_map
from medseg_mem.variants.trained_run import open_trained_run


class RunInfer(InferTask):
    """Segment with the run variant ``variant`` serves (first ``initial``) on the CPU.

    Args:
        app_dir: the app folder (where published runs are recorded).
        variant: ``full``, ``patch`` or ``cascade``.
        initial: the run folder served until a train task publishes another.
    """

    def __init__(self, app_dir: Path, variant: str, initial: Path) -> None:
        trained = open_trained_run(initial)
        super().__init__(type=InferType.SEGMENTATION, labels=class_labels(trained.class_names), dimension=3,
                         description=f"medseg-mem {variant} U-Net ({trained.dataset})",
                         config={"variant": variant})  # fmt: skip
        self.app_dir, self.variant, self.initial = Path(app_dir), variant, Path(initial)
        self._loaded: Tuple[Path, Segmenter] = (Path(), None)

    def is_valid(self) -> bool:
        return True

    def get_path(self, validate: bool = True) -> str:
        """The best checkpoint of the served run's first stage (what ``GET /model/<variant>`` sends)."""
        return str(next(iter(self.segmenter().trained.paths.values())))

    def segmenter(self) -> Segmenter:
        """The served run's networks, loaded again when the served run changed."""
        run = current_run(self.app_dir, self.variant, self.initial)
        if self._loaded[0] != run:
            self._loaded = (run, Segmenter(open_trained_run(run), torch.device("cpu")))
        return self._loaded[1]

    def __call__(self, request) -> Tuple[str, Dict]:
        start = time.perf_counter()
        segmenter, scan = self.segmenter(), Path(request["image"])
        with tempfile.NamedTemporaryFile(suffix=".nii.gz", delete=False) as handle:
            target = Path(handle.name)
        write_label_map(segmenter(scan), scan, target, segmenter.trained.num_classes)
        return str(target), {"run": str(self._loaded[0]), "variant": self.variant,
                             "latency": round(time.perf_counter() - start, 3)}  # fmt: skip


def class_labels(class_names) -> Dict[str, int]:
    """``{class name: label value}`` of the foreground classes (what Slicer names the segments by).

    Example:
        >>> class_labels(["background", "anterior", "posterior"])
        {'anterior': 1, 'posterior': 2}
    """
    return {name: index for index, name in enumerate(class_names) if index}
