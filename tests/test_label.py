"""MONAI Label serves medseg-mem runs: the server started as ``medseg-mem label`` in a subprocess and driven over
HTTP as 3D Slicer's MONAI Label module does (models listed, infer, save a label, train, next sample).

The server test needs the ``label`` extra (``pip install -e '.[test,label]'``) and is skipped without it; the
option and extra checks run everywhere.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from medseg_mem.cli import main
from medseg_mem.core.errors import MedsegError
from medseg_mem.label import MISSING
from medseg_mem.label.retrain import MIN_CASES, retrain
from medseg_mem.label.served import current_run, publish, served_runs
from medseg_mem.variants.trained_run import open_trained_run

HAS_MONAILABEL = importlib.util.find_spec("monailabel") is not None
needs_monailabel = pytest.mark.skipif(not HAS_MONAILABEL,
                                      reason="MONAI Label not installed: pip install -e '.[test,label]'")
VARIANTS = ("full", "patch")
READY_SECONDS = 180  # a generous bound on start-up under load; no test asserts a duration


@pytest.fixture(scope="module")
def runs(trained_runs, tmp_path_factory):
    """``{variant: run folder}``: copies of the session's tiny run of each of :data:`VARIANTS` (the server and
    retraining only read them; copies keep the shared runs safe all the same)."""
    base = tmp_path_factory.mktemp("label-runs") / "runs"
    return {name: Path(shutil.copytree(trained_runs(name), base / trained_runs(name).name)) for name in VARIANTS}


@pytest.fixture(scope="module")
def source_cases(tiny_prepared):
    """``[(scan, label map)]`` of the tiny task's MSD files, as a user has them."""
    manifest = json.loads((tiny_prepared.root / "manifest.json").read_text())
    source = Path(manifest["source"])
    return [(source / case["image"], source / case["label"]) for case in manifest["cases"]]


def test_served_runs_are_checked_and_a_published_run_is_served_next(runs, tmp_path):
    assert served_runs(list(runs.values())) == {name: run.resolve() for name, run in runs.items()}
    with pytest.raises(MedsegError, match="both full runs; serve one run per variant"):
        served_runs([runs["full"], runs["full"]])
    with pytest.raises(MedsegError, match="--run: give at least one"):
        served_runs([])
    assert current_run(tmp_path, "full", runs["full"]) == runs["full"]
    publish(tmp_path, "full", runs["patch"])
    assert current_run(tmp_path, "full", runs["full"]) == runs["patch"].resolve()


def test_retrain_refuses_too_few_labels_and_no_steps(runs, source_cases, tmp_path):
    with pytest.raises(MedsegError, match=f"2 labelled scan\\(s\\) received; training needs at least {MIN_CASES}"):
        retrain(runs["full"], source_cases[:2], tmp_path, steps=2)
    with pytest.raises(MedsegError, match="steps must be a positive number"):
        retrain(runs["full"], source_cases, tmp_path, steps=0)


def test_label_command_says_how_to_install_the_extra(runs, tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "monailabel" else object())
    result = CliRunner().invoke(main, ["label", "--studies", str(tmp_path), "--run", str(runs["full"])])
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {MISSING}"


@needs_monailabel
def test_label_command_refuses_a_folder_that_is_not_a_run_in_one_line(tmp_path):
    result = CliRunner().invoke(main, ["label", "--studies", str(tmp_path), "--run", str(tmp_path),
                                       "--app-dir", str(tmp_path / "app")])  # fmt: skip
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1 and result.output.startswith(f"Error: --run {tmp_path}: ")


# --- the server, driven over HTTP ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def call(method: str, url: str, body: bytes = None, headers=None, timeout: float = 300):
    """``(status, headers, body)`` of one HTTP request (error statuses too)."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def multipart(fields, files):
    """``(body, content type)`` of a multipart form: ``fields`` ``{name: text}``, ``files`` ``{name: path}``."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, text in fields.items():
        parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{text}\r\n'.encode()]
    for name, path in files.items():
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{Path(path).name}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n")
        parts += [head.encode(), Path(path).read_bytes(), b"\r\n"]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class Server:
    """``medseg-mem label`` in a session of its own, so teardown reaches the train processes it starts."""

    def __init__(self, folder: Path, studies: Path, runs) -> None:
        self.port, self.log = free_port(), folder / "server.log"
        self.base = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "medseg_mem", "label", "--studies", str(studies), "--app-dir",
                   str(folder / "app"), "--port", str(self.port)] + [f"--run={run}" for run in runs.values()]
        env = {**os.environ, "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false", "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",
               "MONAI_LABEL_SESSIONS": "false"}  # fmt: skip
        with open(self.log, "wb") as log:  # cwd: no stray .env is read
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder,
                                            start_new_session=True)  # fmt: skip

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the server exited with {self.process.returncode}:\n{self.tail()}")
            try:
                if call("GET", self.base + "/info/", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        pytest.fail(f"the server did not answer /info/ within {READY_SECONDS} s:\n{self.tail()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def infer(self, model: str, image: str, output: str = "image"):
        """``POST /infer/<model>?image=<id>``; ``output=""``: no ``output``, as 3D Slicer asks."""
        return call("POST", f"{self.base}/infer/{model}?image={image}" + (f"&output={output}" if output else ""))

    def json(self, method: str, path: str, payload=None):
        status, _, body = call(method, self.base + path, json.dumps(payload or {}).encode(),
                               {"Content-Type": "application/json"})  # fmt: skip
        return status, json.loads(body or b"null")


@pytest.fixture(scope="module")
def server(runs, source_cases, tmp_path_factory):
    """The server on a copy of the tiny task's scans (MONAI Label writes into its studies folder)."""
    folder = tmp_path_factory.mktemp("label-server")
    studies = folder / "studies"
    studies.mkdir()
    for scan, _ in source_cases:
        shutil.copyfile(scan, studies / scan.name)
    server = Server(folder, studies, runs)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def label_of(source_cases, image_id: str) -> Path:
    (label,) = [label for scan, label in source_cases if scan.name == f"{image_id}.nii.gz"]
    return label


@pytest.mark.slow
@needs_monailabel
def test_slicer_round_trip_infer_save_train_infer_next_sample(server, runs, source_cases, tmp_path):
    status, _, body = call("GET", server.base + "/info/")
    info = json.loads(body)
    assert status == 200, server.tail()
    assert sorted(info["models"]) == sorted(VARIANTS) and sorted(info["trainers"]) == sorted(VARIANTS)
    assert info["models"]["full"]["type"] == "segmentation" and "uncertain" in info["strategies"]
    ids = sorted(scan.name[: -len(".nii.gz")] for scan, _ in source_cases)
    scan = nib.load(str(source_cases[0][0]))

    status, headers, body = server.infer("full", ids[0])  # the label map alone
    assert status == 200, server.tail()
    (tmp_path / "pred.nii.gz").write_bytes(body)
    predicted = nib.load(str(tmp_path / "pred.nii.gz"))
    assert predicted.shape == scan.shape and np.allclose(predicted.affine, scan.affine)
    assert predicted.get_data_dtype() == np.uint8
    status, headers, body = server.infer("full", ids[0], output="")  # what Slicer parses: params + image parts
    assert status == 200 and headers["content-type"].startswith("multipart/form-data"), server.tail()
    before = json.loads(server.infer("full", ids[0], output="json")[2])
    assert Path(before["run"]) == runs["full"].resolve()

    for image_id in ids[:MIN_CASES]:  # Slicer's "Submit Label"
        body, kind = multipart({"params": json.dumps({"label_info": [{"name": "anterior", "idx": 1}]})},
                               {"label": label_of(source_cases, image_id)})  # fmt: skip
        status, _, answer = call("PUT", f"{server.base}/datastore/label?image={image_id}", body,
                                 {"Content-Type": kind})  # fmt: skip
        assert status == 200 and json.loads(answer)["image"] == image_id, server.tail()

    status, task = server.json("POST", "/train/full", {"steps": 2})
    assert status == 200 and task["status"] == "SUBMITTED", task
    deadline = time.monotonic() + 600
    while task["status"] not in ("DONE", "ERROR", "STOPPED") and time.monotonic() < deadline:
        time.sleep(1)
        task = server.json("GET", "/train/")[1]
    assert task["status"] == "DONE", "\n".join(task.get("details") or []) + server.tail()

    after = json.loads(server.infer("full", ids[0], output="json")[2])
    new_run = Path(after["run"])
    assert new_run != runs["full"].resolve() and new_run.parent == server.log.parent / "app" / "work" / "runs"
    (new_weights,) = open_trained_run(new_run).paths.values()
    (old_weights,) = open_trained_run(runs["full"]).paths.values()
    assert new_weights.read_bytes() != old_weights.read_bytes()
    record = json.loads((new_run / "run.json").read_text())  # fine-tuned from the served run, on 3 labels
    assert record["train"]["steps"] == 2 and record["init_from_dir"] == str(runs["full"].resolve())
    status, _, body = server.infer("full", ids[0])  # the new run's map, still in the scan's grid
    (tmp_path / "after.nii.gz").write_bytes(body)
    assert nib.load(str(tmp_path / "after.nii.gz")).shape == scan.shape
    assert Path(before["run"]).exists() and Path(current_run(server.log.parent / "app", "patch", runs["patch"])) \
        == runs["patch"]  # the served run is kept; patch was not trained

    status, sample = server.json("POST", "/activelearning/uncertain")
    assert status == 200 and sample["id"] in ids[MIN_CASES:], server.tail()
