"""The variants ranked by accuracy: the results CSV's ``run`` rows for a dataset by their mean test Dice over
classes and runs, best first; variants without rows follow in the thesis's order (``full`` > ``cascade`` >
``patch``), which is also the whole order when the CSV has no rows for the dataset. ``--variant auto``
(:mod:`medseg_mem.runner.auto`, :mod:`medseg_mem.predict.auto`) takes the first that fits.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

from medseg_mem.core.errors import MedsegError
from medseg_mem.core.names import THESIS_ORDER
from medseg_mem.core.units import dice_percent
from medseg_mem.report.results import final_rows, read_results


def accuracy_order(results: Path, dataset: str) -> Tuple[List[str], str]:
    """Variants best first, and where the order comes from (``results``' mean Dice, or the thesis).

    A missing or unreadable CSV gives the thesis's order (it is read only to rank, never changed).
    """
    means = _mean_dice(Path(results), dataset)
    ranked = sorted(means, key=lambda name: -means[name])
    order = ranked + [name for name in THESIS_ORDER if name not in means]
    if not means:
        return order, "no results for this dataset yet: the thesis's order full > cascade > patch"
    scores = ", ".join(f"{name} {dice_percent(means[name])}" for name in ranked)
    return order, f"mean test Dice (%) in {results}: {scores}"


def _mean_dice(results: Path, dataset: str) -> dict:
    """``{variant: mean Dice}`` of the ``run`` rows of ``dataset`` in ``results`` over the scored classes (empty
    when there are none)."""
    if not results.is_file():
        return {}
    try:
        table = final_rows(read_results(results))
    except MedsegError:
        return {}
    rows = table[(table.dataset == dataset) & (table.source == "run") & table.variant.isin(THESIS_ORDER)]
    rows = rows[rows.dice.notna()]  # an unscored class (absent from every test case) does not rank a variant
    return {str(name): float(group.dice.mean()) for name, group in rows.groupby("variant")}
