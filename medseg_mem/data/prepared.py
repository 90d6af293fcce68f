"""The prepared-dataset format: what ``medseg-mem prepare`` writes and what training and prediction read.

Layout of a prepared folder (default ``./medseg-work/prepared``)::

    manifest.json   format tag "medseg-mem-prepared/2", dataset name, source folder, class_names (indexed by
                    label value), modalities, in_channels, the full preprocessing settings (incl. CT
                    statistics) and per case: id, source image/label paths, original and prepared shape, spacing
    splits.json     [{"train": [...], "val": [...], "test": [...]}]: the split, in nnU-Net's splits_final.json format
                    with a test list (:mod:`~medseg_mem.data.splits`): the seeded 60/20/20 split or the user's
                    (``prepare --splits``); users may edit it. Folders written before it hold
                    ``split.json`` ``{"seed": s, "train": [...], "val": [...], "test": [...]}``, still read
    cases/<id>/     one uncompressed ``.npy`` per array, so training memory-maps them and reads only what a
                    sample needs: image.npy float32 (C, X, Y, Z), label.npy uint8 (1, X, Y, Z), affine.npy
                    float64 4x4 (prepared grid), original_affine.npy 4x4, original_shape.npy (spatial)

Format 1 (``cases/<id>.npz``, which cannot be memory-mapped) is refused with a one-line error that says to run
``prepare`` again.

The folder appears atomically: it is written into a hidden sibling staging folder, then renamed into place
(:func:`medseg_mem.core.files.atomic.publish_folder`).

Example:
    >>> data = PreparedDataset.open(Path("medseg-work/prepared"))  # doctest: +SKIP
    >>> case = data.load(data.ids("train")[0])  # doctest: +SKIP
    >>> case.image.shape, case.label.dtype  # memory-mapped, read on access  # doctest: +SKIP
    ((1, 32, 32, 96), dtype('uint8'))
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from medseg_mem.core.errors import DatasetError, MedsegError, look_up_option

FORMAT = "medseg-mem-prepared/2"
OLD_FORMATS = ("medseg-mem-prepared/1",)
SPLITS = ("train", "val", "test")
HOLDOUT_FRACTION = 0.2  # each of val and test; train gets the rest (60/20/20, thesis 2.1)
MIN_SPLIT_CASES = 3  # fewer cases leave val and test empty
CASE_KEYS = ("image", "label", "affine", "original_affine", "original_shape")
MANIFEST_KEYS = ("format", "name", "source", "class_names", "modalities", "in_channels", "preprocessing", "cases")
HINT = "run `medseg-mem prepare` first"


@dataclass(frozen=True)
class Case:
    """One prepared case: ``image`` float32 (C, X, Y, Z), ``label`` uint8 (1, X, Y, Z), ``affine`` 4x4.

    ``image`` and ``label`` are read-only memory maps when loaded with ``mmap=True``: slicing them reads only
    the bytes needed, and nothing stays resident once they are dropped.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray


def make_split(case_ids: Sequence[str], seed: int) -> Dict[str, object]:
    """Split case ids 60/20/20 into train/val/test, deterministically from ``seed``.

    The ids are sorted first, so the split does not depend on the order of ``dataset.json``. With 3 or more
    cases, val and test hold at least one case each.

    Example:
        >>> split = make_split([f"c{i}" for i in range(10)], seed=0)
        >>> [len(split[k]) for k in ("train", "val", "test")]
        [6, 2, 2]
    """
    ids = sorted(case_ids)
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    n_hold = max(1, int(np.floor(HOLDOUT_FRACTION * len(ids) + 0.5))) if len(ids) >= MIN_SPLIT_CASES else 0
    n_train = len(ids) - 2 * n_hold
    return {
        "seed": int(seed),
        "train": sorted(order[:n_train]),
        "val": sorted(order[n_train : n_train + n_hold]),
        "test": sorted(order[n_train + n_hold :]),
    }


def save_case(folder: Path, case_id: str, arrays: Dict[str, np.ndarray]) -> Path:
    """Write ``cases/<case_id>/<key>.npy`` for every key of :data:`CASE_KEYS` under ``folder``; return the folder."""
    path = Path(folder) / "cases" / case_id
    path.mkdir(parents=True, exist_ok=True)
    for key in CASE_KEYS:
        np.save(path / f"{key}.npy", arrays[key], allow_pickle=False)
    return path


def write_json(path: Path, content: dict) -> None:
    """Write ``content`` as indented JSON (stable key order, so reruns give identical files)."""
    Path(path).write_text(json.dumps(content, indent=1) + "\n", encoding="utf-8")


def describe_occupant(out_dir: Path, source: Path) -> Optional[str]:
    """Say what ``out_dir`` holds that a new prepared dataset of ``source`` must not silently replace.

    Returns ``None`` when the folder is absent, empty, or a prepared dataset of the same ``source`` folder
    (derived data, safe to regenerate); otherwise a short description such as ``"3 other file(s) (notes.txt, ...)"``.
    """
    out_dir = Path(out_dir)
    if not out_dir.exists() and not out_dir.is_symlink():
        return None
    if not out_dir.is_dir():
        return "a file, not a folder"
    entries = sorted(p.name for p in out_dir.iterdir())
    if not entries:
        return None
    manifest = _read_manifest_quietly(out_dir / "manifest.json")
    if manifest is not None and manifest.get("format") == FORMAT:
        if manifest.get("source") == str(Path(source).resolve()):
            return None
        return f"a prepared dataset of another source ({manifest.get('source')})"
    return f"{len(entries)} other file(s) ({', '.join(entries[:3])}{', ...' if len(entries) > 3 else ''})"


def _read_manifest_quietly(path: Path) -> Optional[dict]:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


class PreparedDataset:
    """Read access to a prepared folder: metadata, the split and one case at a time.

    Args:
        root: the prepared folder.
        manifest: the parsed ``manifest.json``.
        split: ``{"train": [...], "val": [...], "test": [...]}`` from ``splits.json`` (or an older ``split.json``).

    Use :meth:`open` rather than the constructor; it checks the folder.

    Example:
        >>> data = PreparedDataset.open(Path("medseg-work/prepared"))  # doctest: +SKIP
        >>> data.num_classes, data.in_channels, len(data.ids("val"))  # doctest: +SKIP
        (3, 1, 10)
    """

    def __init__(self, root: Path, manifest: dict, split: dict) -> None:
        self.root = Path(root)
        self.manifest = manifest
        self.split = split
        self.name: str = manifest["name"]
        self.class_names: List[str] = list(manifest["class_names"])
        self.num_classes: int = len(self.class_names)
        self.in_channels: int = int(manifest["in_channels"])
        self.modalities: List[str] = list(manifest["modalities"])
        self._case_ids = [case["id"] for case in manifest["cases"]]
        self._records = {case["id"]: case for case in manifest["cases"]}

    @classmethod
    def open(cls, root: Path) -> "PreparedDataset":
        """Open and check a prepared folder.

        Raises:
            DatasetError: naming the folder and telling to run ``medseg-mem prepare`` first, when the folder,
                ``manifest.json`` or the split file is missing or malformed.
            MedsegError: ``splits.json`` breaks a rule of :func:`~medseg_mem.data.splits.parse_splits` (an unknown
                case, a case in two splits), in one line naming it.
        """
        root = Path(root)
        if not root.is_dir():
            raise DatasetError([f"no prepared dataset here; {HINT}"], where=str(root))
        manifest = _load_json(root / "manifest.json", root)
        _refuse_old_format(manifest, root)
        problems = _manifest_problems(manifest)
        if problems:
            raise DatasetError(problems + [f"the folder is damaged or from another tool; {HINT}"], where=str(root))
        return cls(root, manifest, _load_split(root, manifest))

    def ids(self, split: str) -> List[str]:
        """Case ids of ``split`` (``"train"``, ``"val"`` or ``"test"``).

        Raises:
            MedsegError: for an unknown split name.
        """
        look_up_option(split, SPLITS, "split")
        return list(self.split[split])

    def load(self, case_id: str, mmap: bool = True) -> Case:
        """Open one case from ``cases/<case_id>/``: image and label memory-mapped (``mmap``) or read whole.

        Raises:
            MedsegError: when ``case_id`` is not in the manifest.
            DatasetError: when one of its files is missing or unreadable.
        """
        if case_id not in self._case_ids:
            close = difflib.get_close_matches(case_id, self._case_ids, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise MedsegError(f"case {case_id!r} is not in {self.root / 'manifest.json'}{hint}")
        mode = "r" if mmap else None
        image, label = self._array(case_id, "image", mode), self._array(case_id, "label", mode)
        return Case(case_id, image, label, self._array(case_id, "affine", None))

    def _array(self, case_id: str, key: str, mmap_mode) -> np.ndarray:
        path = self.root / "cases" / case_id / f"{key}.npy"
        try:
            return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
        except (OSError, ValueError) as error:
            where = f"cases/{case_id}/{key}.npy"
            raise DatasetError([f"{where} cannot be read ({error}); {HINT}"], str(self.root)) from error

    def shape(self, case_id: str) -> tuple:
        """Prepared spatial shape ``(X, Y, Z)`` of a case, from the manifest (nothing is read)."""
        return tuple(int(s) for s in self._records[case_id]["prepared_shape"])

    def largest_image_shape(self) -> Tuple[int, int, int, int]:
        """``(C, X, Y, Z)`` of the case with the most voxels (any split), from the manifest (nothing is read).

        Raises:
            DatasetError: the manifest lists no case, or a case has no valid ``prepared_shape``.
        """
        sizes = [_prepared_size(case, self.root) for case in self.manifest["cases"]]
        if not sizes:
            raise DatasetError([f"manifest.json lists no cases; {HINT}"], where=str(self.root))
        largest = max(sizes, key=lambda size: size[0] * size[1] * size[2])
        return (self.in_channels, *largest)

    def largest(self, split: str) -> str:
        """Id of the case of ``split`` with the most voxels (for memory measurement)."""
        return max(self.ids(split), key=lambda case_id: int(np.prod(self.shape(case_id))))

    def __len__(self) -> int:
        return len(self._case_ids)

    def __repr__(self) -> str:
        sizes = "/".join(str(len(self.split[s])) for s in SPLITS)
        return f"PreparedDataset({str(self.root)!r}, name={self.name!r}, cases={len(self)}, split={sizes})"


def _prepared_size(case: dict, root: Path) -> Tuple[int, int, int]:
    """A case's ``prepared_shape`` ``[X, Y, Z]`` as three positive integers, or a DatasetError naming the case."""
    size = case.get("prepared_shape")
    if not isinstance(size, list) or len(size) != 3 or not all(isinstance(s, int) and s > 0 for s in size):
        problem = f"manifest.json: case {case.get('id')!r} has prepared_shape {size!r}, expected [X, Y, Z] > 0"
        raise DatasetError([problem + "; run `medseg-mem prepare` again"], where=str(root))
    return tuple(size)


def _load_split(root: Path, manifest: dict) -> Dict[str, List[str]]:
    """The split of ``splits.json`` (checked against the manifest's cases), or of an older folder's ``split.json``."""
    from medseg_mem.data.splits import LEGACY_NAME, SPLITS_NAME, read_splits_file

    ids = [case["id"] for case in manifest["cases"]]
    if (root / SPLITS_NAME).exists():
        return read_splits_file(root / SPLITS_NAME, ids, allow_empty=True)
    split = _load_json(root / LEGACY_NAME, root)
    problems = _split_problems(split, manifest)
    if problems:
        raise DatasetError(problems + [f"the folder is damaged or from another tool; {HINT}"], where=str(root))
    return split


def _load_json(path: Path, root: Path) -> dict:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise DatasetError([f"{path.name} not found; {HINT}"], where=str(root)) from error
    except (OSError, ValueError) as error:
        raise DatasetError([f"{path.name} is not valid JSON ({error}); {HINT}"], where=str(root)) from error
    if not isinstance(content, dict):
        raise DatasetError([f"{path.name} must hold a JSON object; {HINT}"], where=str(root))
    return content


def _refuse_old_format(manifest: dict, root: Path) -> None:
    """A folder of an older format gets one line saying how to rewrite it (its source is still known)."""
    if manifest.get("format") in OLD_FORMATS:
        source = manifest.get("source", "TASK_DIR")
        problem = (
            f"prepared by an older medseg-mem (format {manifest['format']}, cases that cannot be memory-mapped); "
            f"run `medseg-mem prepare {source} --out {root} --overwrite` to rewrite it as {FORMAT}"
        )
        raise DatasetError([problem], where=str(root))


def _manifest_problems(manifest: dict) -> List[str]:
    if manifest.get("format") != FORMAT:
        return [f"manifest.json: format is {manifest.get('format')!r}, expected {FORMAT!r}"]
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        return [f"manifest.json: missing key(s) {', '.join(missing)}"]
    if not isinstance(manifest["cases"], list) or not all(isinstance(c, dict) and "id" in c for c in manifest["cases"]):
        return ["manifest.json: 'cases' must be a list of objects with an 'id'"]
    return []


def _split_problems(split: dict, manifest: dict) -> List[str]:
    problems = [f"split.json: missing list {name!r}" for name in SPLITS if not isinstance(split.get(name), list)]
    if problems or not isinstance(manifest.get("cases"), list):
        return problems
    known = {case.get("id") for case in manifest["cases"] if isinstance(case, dict)}
    unknown = sorted({i for name in SPLITS for i in split[name]} - known)
    if unknown:
        problems.append(f"split.json: case id(s) {', '.join(map(str, unknown[:5]))} are not in manifest.json")
    return problems
