"""Exceptions the library raises for bad user input, and the "did you mean" helper.

Library code raises these; the CLI turns them into one-line click errors. Every message names the
file or option, what was wrong and what would fix it.
"""

from __future__ import annotations

import difflib
from typing import Iterable, Sequence


class MedsegError(Exception):
    """Base class of every error caused by user input (files, options, checkpoints)."""


class DatasetError(MedsegError):
    """One or more problems found while checking an MSD task folder or a prepared dataset.

    Args:
        problems: one human-readable line per problem; all of them are reported, not just the first.
        where: the folder or file the problems were found in.
    """

    def __init__(self, problems: Sequence[str], where: str = "") -> None:
        self.problems = list(problems)
        self.where = where
        head = f"{len(self.problems)} problem(s) in {where}" if where else f"{len(self.problems)} problem(s)"
        if len(self.problems) == 1:
            message = f"{where}: {self.problems[0]}" if where else self.problems[0]
        else:
            message = head + ":\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)


class OptionError(MedsegError):
    """An option value outside its rule; the message names the option, the rule and the value."""

    def __init__(self, option: str, rule: str, value: object) -> None:
        self.option = option
        super().__init__(f"{option} {rule}; got {value!r}")


def check_choice(option: str, value: object, names: Sequence[str]) -> object:
    """``value`` when it is one of ``names`` (a tuple of :mod:`medseg_mem.core.names`, which the CLI's
    ``click.Choice`` is built from too): the one rule of a choice option.

    Raises:
        OptionError: ``<option> must be one of <names>; got <value>``.

    Example:
        >>> check_choice("--precision", "bf16", ("fp32", "bf16"))
        'bf16'
    """
    if value not in names:
        raise OptionError(option, f"must be one of {', '.join(names)}", value)
    return value


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    """Return a hint such as "did you mean 'patch'? Valid: full, patch, cascade" for an unknown ``name``."""
    valid = list(valid)
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{hint}valid names: {', '.join(valid)}"


def look_up_option(name: str, valid: Iterable[str], option: str) -> str:
    """Return ``name`` if it is one of ``valid``, else raise :class:`MedsegError` naming ``option``, ``name``, the
    nearest valid name and all of them (difflib, not MONAI's ``look_up_option``: that one imports torch, answers in
    three lines and lists the names as an unordered set)."""
    valid = list(valid)
    if name in valid:
        return name
    raise MedsegError(f"{option}: unknown name {name!r}; {did_you_mean(name, valid)}")
