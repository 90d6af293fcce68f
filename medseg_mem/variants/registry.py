"""Name -> variant registry, the factory, and "did you mean" for unknown names."""

from __future__ import annotations

from typing import Dict, List, Type

from medseg_mem.core.errors import look_up_option
from medseg_mem.core.names import VARIANT_NAMES
from medseg_mem.variants.base import Variant
from medseg_mem.variants.cascade import CascadeVariant
from medseg_mem.variants.full import FullVariant
from medseg_mem.variants.patch import PatchVariant

REGISTRY: Dict[str, Type[Variant]] = {cls.name: cls for cls in (FullVariant, PatchVariant, CascadeVariant)}
if tuple(REGISTRY) != VARIANT_NAMES:
    raise RuntimeError(f"variant registry {tuple(REGISTRY)} disagrees with names.VARIANT_NAMES {VARIANT_NAMES}")


def get_variant(name: str) -> Variant:
    """Return a new variant by name; unknown names raise with the nearest valid name and the valid list."""
    return REGISTRY[look_up_option(name, REGISTRY, "--variant")]()


def resolve_variants(names: List[str]) -> List[str]:
    """Expand ``all`` and check every name, keeping the registry order for ``all``."""
    if "all" in names:
        return list(REGISTRY)
    return [look_up_option(name, REGISTRY, "--variant") for name in names]
