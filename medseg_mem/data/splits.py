"""The train/val/test split of a prepared dataset as a file a user can read, edit and bring: ``splits.json``.

The format is nnU-Net's ``splits_final.json`` (a list of folds, each ``{"train": [...], "val": [...]}``) with a
``"test"`` list added to the fold, since medseg-mem evaluates every run on a held-out test split; medseg-mem
trains one split, so the list holds one fold::

    [{"train": ["case_003", "case_007", ...], "val": ["case_001", ...], "test": ["case_002", ...]}]

``prepare`` writes it into the prepared folder (the seeded 60/20/20 split, or the file ``--splits`` names), and
training reads it from there, so editing it changes the split of the runs that follow. A single object
``{"train", "val", "test"}`` (the ``split.json`` of older prepared folders) is read too. Rules, each broken one
said in one line naming the file: every id is a case of the dataset, no case is in two splits (or twice in one),
and (for ``--splits``) no split is empty. Cases in no split are prepared but neither trained nor evaluated.
nnU-Net's own ``splits_final.json`` has no test list and five folds: keep one fold and add ``"test"``.

Example:
    >>> parse_splits([{"train": ["a", "b"], "val": ["c"], "test": ["d"]}], ["a", "b", "c", "d"], "splits.json")
    {'train': ['a', 'b'], 'val': ['c'], 'test': ['d']}
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Dict, List, Sequence

from medseg_mem.core.errors import MedsegError

SPLITS_NAME = "splits.json"
#: What prepared folders written before ``splits.json`` hold (``{"seed", "train", "val", "test"}``).
LEGACY_NAME = "split.json"
SPLITS = ("train", "val", "test")
FORMAT_HINT = 'a list holding one fold [{"train": [...], "val": [...], "test": [...]}]'
SHOWN = 5

Split = Dict[str, List[str]]


def splits_content(split: Split) -> list:
    """What ``splits.json`` holds for ``split``: one fold, its lists sorted."""
    return [{name: sorted(split[name]) for name in SPLITS}]


def parse_splits(content: object, case_ids: Sequence[str], where: str, allow_empty: bool = False) -> Split:
    """The split in a ``splits.json``'s parsed ``content``, checked against the dataset's ``case_ids``.

    Args:
        content: one fold in a list (nnU-Net's format) or a single ``{"train", "val", "test"}`` object.
        case_ids: every case of the dataset.
        where: how messages name the file (``--splits my.json``, ``<prepared>/splits.json``).
        allow_empty: accept an empty split (a prepared dataset of fewer than 3 cases has one).

    Raises:
        MedsegError: one line naming ``where``, the rule broken and the fix: not one fold, a list missing or not
            of strings, an unknown case id, a case in two splits or twice in one, an empty split.
    """
    fold = _one_fold(content, where)
    split = {name: _id_list(fold, name, where) for name in SPLITS}
    _check_known(split, case_ids, where)
    _check_disjoint(split, where)
    empty = [name for name in SPLITS if not split[name]]
    if empty and not allow_empty:
        raise MedsegError(f"{where}: the {' and '.join(empty)} split(s) are empty; every split needs a case "
                          "(training validates on val and is evaluated on test)")  # fmt: skip
    return split


def read_splits_file(path: Path, case_ids: Sequence[str], where: str = "", allow_empty: bool = False) -> Split:
    """:func:`parse_splits` of the JSON file ``path`` (``where`` defaults to the path).

    Raises:
        MedsegError: the file cannot be read or is not JSON, or breaks a rule of :func:`parse_splits`.
    """
    where = where or str(path)
    try:
        content = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MedsegError(f"{where}: file not found; pass a splits file like {FORMAT_HINT}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise MedsegError(f"{where}: cannot be read ({error}); check the file") from error
    except ValueError as error:
        raise MedsegError(f"{where}: not valid JSON ({error}); fix the syntax") from error
    return parse_splits(content, case_ids, where, allow_empty)


def _one_fold(content: object, where: str) -> dict:
    if isinstance(content, dict) and "train" in content:
        return content  # the single-object form of older prepared folders
    if not isinstance(content, list) or len(content) != 1 or not isinstance(content[0], dict):
        folds = f"{len(content)} folds" if isinstance(content, list) else f"a JSON {type(content).__name__}"
        raise MedsegError(f"{where}: holds {folds}; expected {FORMAT_HINT} (medseg-mem trains one split: keep "
                          "one fold of nnU-Net's splits_final.json and add its test cases)")  # fmt: skip
    return content[0]


def _id_list(fold: dict, name: str, where: str) -> List[str]:
    ids = fold.get(name)
    if ids is None:
        hint = " (nnU-Net's splits_final.json has none: add the held-out test cases)" if name == "test" else ""
        raise MedsegError(f"{where}: the fold has no {name!r} list{hint}; expected {FORMAT_HINT}")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise MedsegError(f"{where}: {name!r} must be a list of case ids (strings); got {ids!r:.80}")
    return list(ids)


def _check_known(split: Split, case_ids: Sequence[str], where: str) -> None:
    known = set(case_ids)
    unknown = sorted({i for name in SPLITS for i in split[name]} - known)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise MedsegError(f"{where}: {len(unknown)} case id(s) are not cases of the dataset: {_listed(unknown)}"
                          f"{hint}; list only its cases (a case id is a file name without .nii.gz, and in nnU-Net's "
                          "imagesTr without _0000)")  # fmt: skip


def _check_disjoint(split: Split, where: str) -> None:
    seen: Dict[str, str] = {}
    for name in SPLITS:
        for case_id in split[name]:
            if case_id in seen:
                both = "twice in " + name if seen[case_id] == name else f"in both {seen[case_id]} and {name}"
                raise MedsegError(f"{where}: case {case_id!r} is {both}; each case belongs to one split at most")
            seen[case_id] = name


def _listed(ids: Sequence[str]) -> str:
    return ", ".join(ids[:SHOWN]) + (", ..." if len(ids) > SHOWN else "")


def left_out(split: Split, case_ids: Sequence[str]) -> List[str]:
    """The cases of ``case_ids`` that no split holds."""
    used = {i for name in SPLITS for i in split[name]}
    return sorted(set(case_ids) - used)
