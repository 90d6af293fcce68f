"""``--variant auto``: the most accurate variant whose planned peak fits the memory budget, and why.

Accuracy comes from the results CSV: the variants that have ``run`` rows for the dataset, by their mean test
Dice over classes and runs, best first. Variants without rows follow in the thesis's order (``full`` >
``cascade`` > ``patch``), which is also the whole order when the CSV has no rows for the dataset. The memory
each variant needs comes from the planner (:mod:`medseg_mem.memory.planner`), so the choice is made before
anything large is allocated. When nothing fits, the error names the smallest requirement and the lever that
would bring it under the budget.

Example:
    >>> choose({"full": 9e9, "cascade": 5e9, "patch": 3e9}, ["full", "cascade", "patch"], 8e9, "--budget").variant
    'cascade'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Mapping, Optional, Sequence, Tuple

from medseg_mem.core.errors import MedsegError
from medseg_mem.core.units import format_bytes

THESIS_ORDER = ("full", "cascade", "patch")  # most accurate first (thesis, Tables 4.1-4.4)


@dataclass(frozen=True)
class Choice:
    """The variant ``--variant auto`` picked and a one-line reason (what fits, what does not, by what rank)."""

    variant: str
    reason: str


def accuracy_order(results: Path, dataset: str) -> Tuple[List[str], str]:
    """Variants best first, and where the order comes from (``results``' mean Dice, or the thesis).

    A missing or unreadable CSV gives the thesis's order (it is read only to rank, never changed).
    """
    means = _mean_dice(Path(results), dataset)
    ranked = sorted(means, key=lambda name: -means[name])
    order = ranked + [name for name in THESIS_ORDER if name not in means]
    if not means:
        return order, "no results for this dataset yet: the thesis's order full > cascade > patch"
    scores = ", ".join(f"{name} {means[name]:.3f}" for name in ranked)
    return order, f"mean test Dice in {results}: {scores}"


def _mean_dice(results: Path, dataset: str) -> dict:
    """``{variant: mean Dice}`` of the ``run`` rows of ``dataset`` in ``results`` over the scored classes (empty
    when there are none)."""
    if not results.is_file():
        return {}
    from medseg_mem.report.results import final_rows, read_results

    try:
        table = final_rows(read_results(results))
    except MedsegError:
        return {}
    rows = table[(table.dataset == dataset) & (table.source == "run") & table.variant.isin(THESIS_ORDER)]
    rows = rows[rows.dice.notna()]  # an unscored class (absent from every test case) does not rank a variant
    return {str(name): float(group.dice.mean()) for name, group in rows.groupby("variant")}


def choose(
    needs: Mapping[str, float], order: Sequence[str], budget: float, budget_source: str, why: str = "",
    lever: Optional[Callable[[str], str]] = None, at_least: Sequence[str] = (),
) -> Choice:  # fmt: skip
    """The first variant of ``order`` whose planned peak ``needs[variant]`` is within ``budget``.

    Args:
        needs: planned peak bytes per candidate variant.
        order: variant names, most accurate first (:func:`accuracy_order`).
        budget: bytes available.
        budget_source: where the budget came from, e.g. ``"--budget"``.
        why: where ``order`` comes from, for the reason line.
        lever: given the smallest variant's name, a hint of what would make it fit (for the error).
        at_least: variants whose need is a lower bound (known over the budget without calibrating): "needs at
            least".

    Raises:
        MedsegError: no candidate fits: names the budget, the smallest requirement and the lever.
    """
    candidates = [name for name in order if name in needs]
    word = {name: "needs at least" if name in at_least else "needs" for name in candidates}
    over = [f"{name} {word[name]} {format_bytes(needs[name])}" for name in candidates if needs[name] > budget]
    for name in candidates:
        if needs[name] <= budget:
            skipped = f" ({'; '.join(over)}: over it)" if over else ""
            reason = (f"{name}: planned {format_bytes(needs[name])} fits {format_bytes(budget)} ({budget_source})"
                      f"{skipped}; ranked by {why or 'the thesis order'}")  # fmt: skip
            return Choice(name, reason)
    smallest = min(candidates, key=lambda name: needs[name])
    hint = f"; {lever(smallest)}" if lever is not None else ""
    raise MedsegError(
        f"{budget_source} {format_bytes(budget)}: no variant fits; the smallest, {smallest}, {word[smallest]} "
        f"{format_bytes(needs[smallest])}{hint}"
    )
