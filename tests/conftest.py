"""Shared fixtures: tiny MSD tasks written on the fly, the prepared embedded default, tiny trained runs, folder
checksums, and what keeps the suite fast and independent of the machine's load.

``make_msd_task(root, n_cases=4, shape=(8, 8, 6), channels=1, ...)`` writes a tiny valid MSD task (3D, or 4D
channel-last when ``channels > 1``) under ``root`` and returns its folder; ``prepared_default`` writes and
prepares the embedded default task once per session (12 cases of 32x32x96) and returns the prepared folder;
``trained_runs(variant, data="tiny")`` trains a tiny run once per session and hands out its folders (read-only:
a test that changes a run copies it first).

Speed: the spawned peak-memory probe (a fresh interpreter per variant, ~5 s of CPU; tested in test_measure.py) is
stubbed in every test not marked ``memory_probe``; end-to-end tests (subprocesses, torchrun, bundle runs) are
marked ``slow``, so ``pytest -m "not slow"`` is the quick loop and CI runs everything. No test asserts a duration:
a subprocess's timeout (``hang_guard.HANG_GUARD_S``) only stops a hung child.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import pytest

#: ``run`` options of the shared tiny runs: 2 steps of a 2-level U-Net, validated after each.
TINY_RUN = ("--steps", "2", "--val-every", "1", "--channels", "2,4", "--quiet")

MRI_MODALITIES = {1: {"0": "MRI"}, 4: {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}}
TINY_LABELS = {"0": "background", "1": "left", "2": "right"}


def save_nifti(array: np.ndarray, path: Path, affine: Optional[np.ndarray] = None) -> Path:
    """Save ``array`` as NIfTI with ``affine`` (identity by default), keeping its dtype."""
    import nibabel as nib

    image = nib.Nifti1Image(array, np.eye(4) if affine is None else affine)
    image.set_data_dtype(array.dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return path


def tiny_case(rng: np.random.Generator, shape: Sequence[int], channels: int, n_labels: int):
    """A positive image (channels on the last axis when > 1) and a label holding every class."""
    spatial = tuple(shape)
    image = rng.normal(100.0, 10.0, size=spatial + ((channels,) if channels > 1 else ()))
    image *= rng.uniform(0.5, 3.0, size=(channels,) if channels > 1 else 1)
    label = np.zeros(spatial, dtype=np.uint8)
    for value in range(1, n_labels):
        x = rng.integers(0, spatial[0] - 2)
        label[x : x + 2, value - 1 :: n_labels, 1:-1] = value
    return np.abs(image).astype(np.float32) + 1.0, label


def _make_msd_task(
    root: Path,
    n_cases: int = 4,
    shape: Sequence[int] = (8, 8, 6),
    channels: int = 1,
    modality: Optional[Dict[str, str]] = None,
    labels: Optional[Dict[str, str]] = None,
    name: str = "Task99_Tiny",
    seed: int = 0,
    affine: Optional[np.ndarray] = None,
) -> Path:
    task = Path(root) / name
    (task / "imagesTr").mkdir(parents=True)
    (task / "labelsTr").mkdir()
    labels = labels or TINY_LABELS
    rng = np.random.default_rng(seed)
    training = []
    for index in range(n_cases):
        case_id = f"tiny_{index:03d}"
        image, label = tiny_case(rng, shape, channels, len(labels))
        save_nifti(image, task / "imagesTr" / f"{case_id}.nii.gz", affine)
        save_nifti(label, task / "labelsTr" / f"{case_id}.nii.gz", affine)
        training.append({"image": f"./imagesTr/{case_id}.nii.gz", "label": f"./labelsTr/{case_id}.nii.gz"})
    meta = {
        "name": name.split("_", 1)[-1],
        "tensorImageSize": "4D" if channels > 1 else "3D",
        "modality": modality or MRI_MODALITIES.get(channels, {str(c): "MRI" for c in range(channels)}),
        "labels": labels,
        "numTraining": n_cases,
        "training": training,
    }
    (task / "dataset.json").write_text(json.dumps(meta, indent=1))
    (task / "imagesTr" / ".DS_Store").write_bytes(b"\x00\x01junk")  # as in real archives: never globbed
    return task


@pytest.fixture
def write_nifti():
    """Factory ``write_nifti(array, path, affine=None) -> path`` saving a NIfTI that keeps ``array``'s dtype."""
    return save_nifti


@pytest.fixture
def make_msd_task():
    """Factory ``make_msd_task(root, n_cases=4, shape=(8, 8, 6), channels=1, modality=None, ...) -> Path``."""
    return _make_msd_task


def edit_dataset_json(task: Path, **changes) -> dict:
    """Apply key changes to ``task/dataset.json`` (a value of ``None`` deletes the key); return the result."""
    path = Path(task) / "dataset.json"
    meta = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    path.write_text(json.dumps(meta, indent=1))
    return meta


@pytest.fixture
def edit_json():
    """Factory ``edit_json(task, key=value, ...)`` rewriting ``dataset.json`` (``None`` deletes a key)."""
    return edit_dataset_json


def tree_checksums(folder: Path) -> Dict[str, str]:
    """SHA-256 of every file under ``folder`` (links included by their target), keyed by relative path."""
    folder = Path(folder)
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def checksums():
    """Factory ``checksums(folder) -> {relative path: sha256}``."""
    return tree_checksums


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """``$TMPDIR`` pointed at an empty folder of the test's own (``tempfile`` reads it afresh)."""
    folder = tmp_path / "scratch"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr("tempfile.tempdir", None)
    return folder


@pytest.fixture(scope="session")
def prepared_default(tmp_path_factory) -> Path:
    """The embedded default task (12 cases of 32x32x96), written and prepared once per session."""
    from medseg_mem.core.prepare_config import PrepareConfig
    from medseg_mem.data.prepare import prepare
    from medseg_mem.data.synthetic import TASK_FOLDER, write_default_task

    base = tmp_path_factory.mktemp("default")
    task = write_default_task(base / TASK_FOLDER, seed=0, n_cases=12)
    prepare(PrepareConfig(task_dir=task, out_dir=base / "prepared", seed=0), progress=False)
    return base / "prepared"


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory):
    """A prepared tiny 3-class task (6 cases of 8x8x20): training streams from it as from any prepared folder."""
    from medseg_mem.core.prepare_config import PrepareConfig
    from medseg_mem.data.prepare import prepare
    from medseg_mem.data.prepared import PreparedDataset

    root = tmp_path_factory.mktemp("tiny")
    task = _make_msd_task(root, n_cases=6, shape=(8, 8, 20))
    prepare(PrepareConfig(task_dir=task, out_dir=root / "prepared"), progress=False)
    return PreparedDataset.open(root / "prepared")


#: The stand-in calibration every test plans with unless it measures or writes its own: made-up round figures, so
#: no test calibrates (10-30 s) and none writes to the user's cache.
TEST_CALIBRATION = {"multiplier": 1.0, "offset_bytes": 20 * 2**20, "baseline_bytes": 300 * 2**20}


def seed_calibrations(folder: Path) -> Path:
    """Write :data:`TEST_CALIBRATION` for every CPU setting into ``folder``'s calibration cache, for this process's
    torch thread count and for one thread (torchrun's ranks and the bundle tests run with ``OMP_NUM_THREADS=1``);
    return the file."""
    from itertools import product

    import torch

    from medseg_mem.memory.calibration import Calibration, calibration_key, save_calibration
    from medseg_mem.memory.calibration_file import FILE_NAME

    path, threads = Path(folder) / FILE_NAME, torch.get_num_threads()
    try:
        for count in sorted({threads, 1}):
            torch.set_num_threads(count)
            for mode, precision, checkpointing, layout in product(("inference", "training"), ("fp32", "bf16", "fp16"),
                                                                  (False, True), (False, True)):  # fmt: skip
                key = calibration_key("cpu", mode, precision, checkpointing, layout)
                save_calibration(path, Calibration(key=key, **TEST_CALIBRATION))
    finally:
        torch.set_num_threads(threads)
    return path


@pytest.fixture(scope="session", autouse=True)
def calibration_cache(tmp_path_factory):
    """The whole session - its fixtures of every scope and the processes it starts - plans with a seeded cache
    (``MEDSEG_MEM_CACHE``), never the user's ``~/.cache/medseg-mem``."""
    folder = tmp_path_factory.mktemp("medseg-mem-cache")
    seed_calibrations(folder)
    before = os.environ.get("MEDSEG_MEM_CACHE")
    os.environ["MEDSEG_MEM_CACHE"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("MEDSEG_MEM_CACHE", None)
    else:
        os.environ["MEDSEG_MEM_CACHE"] = before


def stub_memory_probe(patch: pytest.MonkeyPatch) -> None:
    """Make ``run`` skip the spawned peak-memory probe (a fresh interpreter per variant, tested in test_measure.py):
    its rows read 0 bytes measured by ``stub``."""
    from medseg_mem.memory.measure import MemoryReading

    patch.setattr("medseg_mem.runner.run.measure_variant_memory", lambda *a, **k: MemoryReading(0, "stub", "cpu"))


@pytest.fixture(autouse=True)
def no_memory_probe(request, monkeypatch):
    """Every test runs with the memory probe stubbed unless it is marked ``memory_probe``."""
    if request.node.get_closest_marker("memory_probe") is None:
        stub_memory_probe(monkeypatch)


class TrainedRuns:
    """Tiny trained runs (:data:`TINY_RUN`, probe stubbed), each trained on first use and kept for the session.

    ``trained_runs(variant, data="tiny")`` returns the run folder (``<base>/runs/<run id>``; ``<base>/results.csv``
    holds its rows) of ``variant`` trained on ``tiny_prepared`` (``data="tiny"``) or ``prepared_default``
    (``data="default"``). The folders are shared: read them, or copy them (``shutil.copytree``) to change them.
    """

    def __init__(self, root: Path, request):
        self.root, self.request, self.folders = Path(root), request, {}

    def __call__(self, variant: str, data: str = "tiny") -> Path:
        if (variant, data) not in self.folders:
            self.folders[variant, data] = self.train(variant, data)
        return self.folders[variant, data]

    def train(self, variant: str, data: str) -> Path:
        from click.testing import CliRunner

        from medseg_mem.cli import main

        prepared = {"tiny": lambda: self.request.getfixturevalue("tiny_prepared").root,
                    "default": lambda: self.request.getfixturevalue("prepared_default")}[data]()  # fmt: skip
        base = self.root / f"{variant}-{data}"
        args = ["run", "--variant", variant, "--data", str(prepared), "--results", str(base / "results.csv"),
                "--runs", str(base / "runs"), *TINY_RUN]  # fmt: skip
        with pytest.MonkeyPatch.context() as patch:
            stub_memory_probe(patch)
            result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        (run,) = (base / "runs").iterdir()
        return run


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory, request) -> TrainedRuns:
    """Factory ``trained_runs(variant, data="tiny") -> run folder``: one tiny trained run per variant and data,
    trained once per session; read-only (copy it to change it)."""
    return TrainedRuns(tmp_path_factory.mktemp("trained-runs"), request)


@pytest.fixture(scope="session")
def seed_7_weights(tmp_path_factory, tiny_prepared):
    """The best weights of a 3-step ``full`` run with seed 7 on the tiny task, trained in a fresh interpreter (what
    the repeatability tests compare against)."""
    from fresh_process import train_in_new_process

    return train_in_new_process(tiny_prepared.root, tmp_path_factory.mktemp("seed-7"), 7)


def pytest_configure(config):
    """Under ``pytest -n N`` (pytest-xdist) each worker computes with one torch thread: N workers on N cores
    would otherwise run 2N threads that wait on each other."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(session, config, items):
    """Files with end-to-end (``slow``) tests first, each file's tests kept together and in order: under
    ``--dist loadfile`` a long file then starts early, not as the last one left, and the workers end together."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)
