"""The three variants compared by medseg-mem; see :mod:`medseg_mem.variants.registry`."""

from medseg_mem.variants.base import Stage, Variant
from medseg_mem.variants.registry import REGISTRY, get_variant, resolve_variants
from medseg_mem.variants.slab_fit import warn_thick_slabs

__all__ = ["Stage", "Variant", "REGISTRY", "get_variant", "resolve_variants", "warn_thick_slabs"]
