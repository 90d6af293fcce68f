"""The three variants compared by medseg-mem (:mod:`~medseg_mem.variants.registry`), and the object that segments
with a trained one (:class:`~medseg_mem.variants.trained.TrainedVariant`)."""

from medseg_mem.variants.base import Stage, StageInference, Variant
from medseg_mem.variants.registry import REGISTRY, get_variant, resolve_variants
from medseg_mem.variants.slab_fit import warn_thick_slabs
from medseg_mem.variants.trained import TrainedVariant

__all__ = ["Stage", "StageInference", "Variant", "REGISTRY", "get_variant", "resolve_variants", "TrainedVariant",
           "warn_thick_slabs"]
