"""Inference helpers: the slab inferer of the ``patch`` variant and the pieces the trainer reuses."""

from medseg_mem.inference.slab import SlabInferer, cut_slab, slab_starts

__all__ = ["SlabInferer", "cut_slab", "slab_starts"]
