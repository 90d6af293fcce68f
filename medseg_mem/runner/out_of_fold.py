"""The cascade's stage 2 trained on stage 1's predictions, as nnU-Net trains its cascade (``--stage2-guidance
predicted``).

At test time stage 2 is guided by stage 1's prediction, with stage 1's mistakes in it. Trained on guidance made
from the ground truth, stage 2 learns to trust its guidance and copies those mistakes. nnU-Net therefore trains
its second stage on the first stage's predictions, made for each training case by a first-stage model that did
not train on it (5-fold cross-validation). This module does the same with ``k = TrainConfig.guidance_folds``
folds (2 by default: the cheaper equivalent; every fold model trains on half the cases, so its mistakes are, if
anything, larger than the final stage 1's):

1. the train split is partitioned into ``k`` folds (:func:`folds`, a function of the seed);
2. for each fold a stage-1 model trains on the other folds' cases (same settings as stage 1; under a
   ``--time-limit`` stage 1 and its ``k`` fold models share stage 1's part of the clock equally) and predicts its
   own fold's cases;
3. the final stage 1 (trained on the whole train split) predicts the val cases, so stage 2's checkpoint is
   chosen on the guidance it will get at test time.

A prediction is a uint8 label map at stage-1 resolution, the same grid as the ground truth it replaces
(:meth:`~medseg_mem.variants.base.Stage.low_label`), written to ``<run>/guidance/<case>.npy``
(:mod:`~medseg_mem.training.guidance_files`): a fraction
``downsample**3`` of a case's voxels, read from disk per case like every training input. Stage 2's guidance is
then made from it exactly as from the ground truth (one-hot, upsampled over the slab, argmax), so
``--guidance-noise`` still applies on top.

Example:
    >>> folds(["a", "b", "c", "d", "e"], k=2, seed=0)  # doctest: +SKIP
    [['a', 'c', 'e'], ['b', 'd']]
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
import torch

from medseg_mem.core.errors import MedsegError
from medseg_mem.data.cases import as_tensor, open_case
from medseg_mem.models.build import load_networks
from medseg_mem.training import distributed
from medseg_mem.training.guidance_files import GUIDANCE_FOLDER, save_guidance
from medseg_mem.training.sampling import StageData
from medseg_mem.training.wallclock import StageTimes
from medseg_mem.variants import StageInference

#: Offset of the fold models' seeds from stage 1's, so their samples and initial weights differ from its own.
FOLD_SEED_OFFSET = 1000


def folds(ids: Sequence[str], k: int, seed: int) -> List[List[str]]:
    """Partition ``ids`` into ``k`` folds of (nearly) equal size, shuffled by ``seed``; each fold sorted.

    Raises:
        MedsegError: fewer cases than folds.
    """
    if len(ids) < k:
        raise MedsegError(f"--guidance-folds {k}: the train split has {len(ids)} case(s), fewer than the folds; "
                          "use fewer folds or --stage2-guidance truth")  # fmt: skip
    order = np.random.default_rng([seed, FOLD_SEED_OFFSET]).permutation(len(ids))
    return [sorted(ids[i] for i in order[fold::k]) for fold in range(k)]


class FoldView:
    """A prepared dataset whose train split is ``train_ids`` (one fold model's cases); all else is the dataset's."""

    def __init__(self, dataset, train_ids: Sequence[str]) -> None:
        self._dataset, self._train_ids = dataset, list(train_ids)

    def ids(self, split: str) -> List[str]:
        return list(self._train_ids) if split == "train" else self._dataset.ids(split)

    def __getattr__(self, name: str):
        return getattr(self._dataset, name)


def predict_cases(checkpoint: Path, stage, model, dataset, device, case_ids: Sequence[str], folder: Path) -> None:
    """Write the predicted label map (argmax, uint8, at ``stage``'s resolution) of each case to ``folder``.

    Args:
        checkpoint: a checkpoint of ``stage`` (cascade stage 1).
        stage: the :class:`~medseg_mem.variants.base.Stage` it belongs to; ``model``: its ``ModelConfig``.
        dataset: the prepared dataset the cases are read from; ``device``: where the network runs.
    """
    run = StageInference(stage, load_networks({stage.name: checkpoint}, device)[stage.name], model)
    with torch.inference_mode():
        for case_id in case_ids:
            image, label = open_case(dataset, case_id)
            x, _ = stage.inputs(as_tensor(image)[None], as_tensor(label)[None], model, dataset.num_classes)
            labels = run.logits(x.to(device)).argmax(dim=1)[0]
            save_guidance(folder, case_id, labels)


def fold_job(job, dataset, index: int, train_ids: Sequence[str], times: StageTimes):
    """Stage 1's job for fold model ``index``: trained on ``train_ids`` only, in ``<stage folder>/folds/<index>``."""
    fold_data = StageData(FoldView(dataset, train_ids), job.stage, job.model, job.train,
                          stage_index=FOLD_SEED_OFFSET + index)  # fmt: skip
    return dataclasses.replace(job, data=fold_data, folder=job.folder / "folds" / str(index), init_weights=None,
                               seed_offset=FOLD_SEED_OFFSET + index, times=times)  # fmt: skip


def predicted_guidance(job, final_checkpoint: Path, run_dir: Path, train_fold) -> Tuple[Path, list]:
    """Train the fold models and write stage 2's guidance: out-of-fold for the train split, the final stage 1's
    (``final_checkpoint``) for the val split. ``train_fold(job)`` trains one job and returns its outcome.

    Returns:
        ``(guidance folder, [fold outcomes])``.
    """
    dataset, train = job.data.dataset, job.train
    folder = Path(run_dir) / GUIDANCE_FOLDER
    ids, outcomes, predictions = dataset.ids("train"), [], []
    for index, held_out in enumerate(folds(ids, train.guidance_folds, train.seed)):
        rest = [case_id for case_id in ids if case_id not in held_out]
        outcomes.append(train_fold(fold_job(job, dataset, index, rest, StageTimes(limit=job.times.limit))))
        predictions.append((outcomes[-1].best_path, held_out))
    if distributed.is_main():  # under torchrun one process writes them, the others wait
        for checkpoint, case_ids in predictions + [(final_checkpoint, dataset.ids("val"))]:
            predict_cases(checkpoint, job.stage, job.model, dataset, job.device, case_ids, folder)
    distributed.barrier()
    return folder, outcomes
