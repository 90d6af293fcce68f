"""Inference helpers: the slab inferer of the ``patch`` variant and the pieces the trainer reuses."""

from medseg_mem.inference.labels import argmax_into, label_dtype, labels_of
from medseg_mem.inference.slab import SlabInferer, cut_slab, slab_starts
from medseg_mem.inference.source import SlabSource

__all__ = ["SlabInferer", "SlabSource", "argmax_into", "cut_slab", "label_dtype", "labels_of", "slab_starts"]
