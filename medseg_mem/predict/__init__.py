"""Prediction: a trained run -> label maps in each scan's own geometry.

Modules: :mod:`~medseg_mem.variants.trained_run` (resolve ``--checkpoint``, load and cross-check every stage),
:mod:`~medseg_mem.predict.files` (inputs, outputs, writing label maps), :mod:`~medseg_mem.predict.segment`
(the pipeline and :func:`predict`), :mod:`~medseg_mem.predict.uncertainty` and :mod:`~medseg_mem.predict.suggest`
(``medseg-mem suggest``: which scans to annotate next, :func:`~medseg_mem.predict.suggest.rank_scans`).
"""

from medseg_mem.predict.segment import PredictSummary, Segmenter, predict

__all__ = ["PredictSummary", "Segmenter", "predict"]
