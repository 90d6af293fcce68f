"""Whether the slab size fits the dataset: a slab thicker than a case's last axis is zero-padded to full size,
which costs memory and adds no context, so ``run`` says so once at its start."""

from __future__ import annotations

from typing import Callable, Iterable, Optional, Sequence, Tuple

from medseg_mem.variants.registry import get_variant


def thick_slab_notice(slab_size: int, variants: Iterable[str], depths: Sequence[int]) -> Optional[str]:
    """A one-line warning when ``slab_size`` exceeds the last-axis ``depths`` of some cases (``None`` if not).

    Only variants with a slab stage are concerned.

    Example:
        >>> thick_slab_notice(64, ["patch"], [32, 40]).split(":")[1]
        ' --slab-size 64 is thicker than 2 of 2 case(s) (last axis 32 to 40 voxels)'
    """
    if not any(stage.slab for name in set(variants) for stage in get_variant(name).stages()):
        return None
    thin = [int(d) for d in depths if int(d) < int(slab_size)]
    if not thin:
        return None
    return (f"warning: --slab-size {slab_size} is thicker than {len(thin)} of {len(depths)} case(s) (last axis "
            f"{min(thin)} to {max(thin)} voxels): their slabs are zero-padded to {slab_size} (more memory, no more "
            f"context); use --slab-size {min(depths)} or less")  # fmt: skip


def warn_thick_slabs(jobs: Iterable[Tuple], dataset, echo: Callable[[str], None]) -> None:
    """Say :func:`thick_slab_notice` once for a run's ``jobs`` ``(run id, variant, train, model)`` on ``dataset``."""
    depths = [int(case["prepared_shape"][-1]) for case in dataset.manifest["cases"]]
    by_slab = {}
    for _, name, _, model in jobs:
        by_slab.setdefault(model.slab_size, []).append(name)
    for slab_size, names in sorted(by_slab.items()):
        notice = thick_slab_notice(slab_size, names, depths)
        if notice:
            echo(notice)
