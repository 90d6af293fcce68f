"""``--variant auto``: the most accurate variant whose planned peak fits the memory budget, and why.

The accuracy order is the caller's (:func:`medseg_mem.report.ranking.accuracy_order`: the results CSV's mean
test Dice, then the thesis's order ``full`` > ``cascade`` > ``patch``). The memory each variant needs comes from
the planner (:mod:`medseg_mem.memory.planner`), so the choice is made before anything large is allocated. When
nothing fits, the error names the smallest requirement and the lever that would bring it under the budget.

Example:
    >>> choose({"full": 9e9, "cascade": 5e9, "patch": 3e9}, ["full", "cascade", "patch"], 8e9, "--budget").variant
    'cascade'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

from medseg_mem.core.errors import MedsegError
from medseg_mem.core.units import format_bytes


@dataclass(frozen=True)
class Choice:
    """The variant ``--variant auto`` picked and a one-line reason (what fits, what does not, by what rank)."""

    variant: str
    reason: str


def choose(
    needs: Mapping[str, float], order: Sequence[str], budget: float, budget_source: str, why: str = "",
    lever: Optional[Callable[[str], str]] = None, at_least: Sequence[str] = (),
) -> Choice:  # fmt: skip
    """The first variant of ``order`` whose planned peak ``needs[variant]`` is within ``budget``.

    Args:
        needs: planned peak bytes per candidate variant.
        order: variant names, most accurate first (:func:`~medseg_mem.report.ranking.accuracy_order`).
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
