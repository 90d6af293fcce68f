"""The peer benchmarks (benchmarks/peer_*.py): nnU-Net's split and missing-package error, peer rows in the results
CSV and in ``compare``, and the MONAI tutorial U-Net peer end to end on a tiny prepared task."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from medseg_mem.memory import MemoryReading
from medseg_mem.report.results import append_rows, read_results
from hang_guard import HANG_GUARD_S

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
#: Runs a script as ``__main__`` with ``nnunetv2`` unimportable, for a Python that has it installed.
WITHOUT_NNUNET = "import runpy, sys; sys.modules['nnunetv2'] = None; sys.argv = sys.argv[1:]; " \
                 "runpy.run_path(sys.argv[0], run_name='__main__')"  # fmt: skip


def load_script(name: str):
    """Import ``benchmarks/<name>.py`` as a module (its own imports find ``peers_common`` next to it)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_nnunet_peer_without_nnunetv2_is_a_one_line_error(tmp_path):
    script = str(BENCHMARKS / "peer_nnunet.py")
    args = [script, "--minutes", "1", "--work", str(tmp_path / "work")]
    if importlib.util.find_spec("nnunetv2") is None:
        command = [sys.executable, *args]
    else:  # this Python has it: hide it from the script
        command = [sys.executable, "-c", WITHOUT_NNUNET, *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("peer_nnunet.py: error: nnunetv2 is not installed")
    assert "pip install 'medseg-mem[peer]'" in lines[0] and "Traceback" not in done.stderr
    assert not (tmp_path / "work").exists()  # stopped before preparing anything


def test_splits_final_json_holds_medseg_mems_train_and_val_ids(tiny_prepared, tmp_path):
    path = load_script("peer_nnunet").write_splits(tiny_prepared, tmp_path)
    folds = json.loads(path.read_text())
    assert path.name == "splits_final.json" and len(folds) == 1
    assert folds[0]["train"] == tiny_prepared.ids("train") and folds[0]["val"] == tiny_prepared.ids("val")
    assert not set(tiny_prepared.ids("test")) & set(folds[0]["train"] + folds[0]["val"])


def test_test_cases_leave_nnunets_training_folders(tmp_path):
    target = tmp_path / "Dataset099_Tiny"
    for folder in ("imagesTr", "imagesTs", "labelsTr"):
        (target / folder).mkdir(parents=True)
    for case in ("tiny_000", "tiny_001", "tiny_002"):
        (target / "imagesTr" / f"{case}_0000.nii.gz").write_bytes(b"image")
        (target / "labelsTr" / f"{case}.nii.gz").write_bytes(b"label")
    (target / "dataset.json").write_text(json.dumps({"numTraining": 3, "file_ending": ".nii.gz"}))
    load_script("peer_nnunet").move_test_cases(target, ["tiny_001"])
    assert sorted(p.name for p in (target / "imagesTr").iterdir()) == ["tiny_000_0000.nii.gz", "tiny_002_0000.nii.gz"]
    assert [p.name for p in (target / "imagesTs").iterdir()] == ["tiny_001_0000.nii.gz"]
    assert [p.name for p in (target / "labelsTs").iterdir()] == ["tiny_001.nii.gz"]
    assert json.loads((target / "dataset.json").read_text())["numTraining"] == 2


def test_nnunet_data_converted_for_another_split_is_refused(tmp_path, capsys):
    target = tmp_path / "work" / "nnunet" / "raw" / "Dataset098_Tiny"
    target.mkdir(parents=True)
    (target / "dataset.json").write_text("{}")  # converted already: nnU-Net is not called
    (target / "medseg_mem_test_ids.json").write_text(json.dumps(["tiny_001"]))
    peer = load_script("peer_nnunet")
    assert peer.convert(Path("Task98_Tiny"), tmp_path / "work", target.parent, ["tiny_001"], 1) == target
    with pytest.raises(SystemExit) as stopped:
        peer.convert(Path("Task98_Tiny"), tmp_path / "work", target.parent, ["tiny_002"], 1)
    assert stopped.value.code == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and "was converted for another test split" in message


def peer_csv(path: Path, method: str) -> Path:
    """A results CSV with one medseg-mem ``full`` run and one nnU-Net peer run, both on the CPU with ``method``."""
    peers = load_script("peers_common")
    dataset = SimpleNamespace(name="Hippocampus", class_names=["background", "Anterior", "Posterior"],
                              modalities=["MRI"], manifest={"preprocessing": {}}, split={"train": ["a"]})
    evaluation = SimpleNamespace(dice=[0.88, 0.86], seconds_per_case=0.9, n_cases=52)
    memory = MemoryReading(300 * 2**20, method, "cpu")
    run = peers.PeerRun("nnunet-3d_fullres", evaluation, memory, 2 * 2**30, 75, 900.0, {"seed": 0, "inferer": "x"})
    full = [dict(row, run_id="run-full", variant="full", source="run", dice=0.80, peak_memory_bytes=100 * 2**20,
                 train_peak_memory_bytes=None)
            for row in peers.peer_rows(run, dataset)]  # fmt: skip
    return append_rows(path, full + peers.peer_rows(run, dataset))


def test_peer_rows_are_read_back_as_peer_runs(tmp_path):
    frame = read_results(peer_csv(tmp_path / "results.csv", "proc.clear_refs+VmHWM"))
    peer = frame[frame["source"] == "peer"]
    assert peer["variant"].tolist() == ["nnunet-3d_fullres"] * 2
    assert peer["class_name"].tolist() == ["Anterior", "Posterior"] and peer["dice"].tolist() == [0.88, 0.86]
    assert peer["train_steps"].tolist() == [75, 75] and peer["train_peak_memory_bytes"].tolist() == [2 * 2**30] * 2
    assert frame.loc[frame["source"] == "run", "train_peak_memory_bytes"].isna().all()


def test_compare_shows_a_peer_beside_medseg_mems_run(tmp_path):
    from medseg_mem.cli.compare import compare

    results = peer_csv(tmp_path / "results.csv", "proc.clear_refs+VmHWM")
    outcome = CliRunner().invoke(compare, [str(results), "--out", str(tmp_path / "report")])
    assert outcome.exit_code == 0, outcome.output
    assert outcome.output.count("## Hippocampus") == 1  # one table for both
    rows = [line.split("|")[1].strip() for line in outcome.output.splitlines() if line.startswith("| ")]
    assert rows[2:] == ["full", "nnunet-3d_fullres"]
    peer_line = next(line for line in outcome.output.splitlines() if line.startswith("| nnunet-3d_fullres"))
    assert "88.00" in peer_line and "86.00" in peer_line and "300 MiB" in peer_line
    assert "peer runs (another tool on the same split and training budget" in outcome.output
    table = (tmp_path / "report" / "comparison.csv").read_text().splitlines()
    assert any(line.startswith("Hippocampus,cpu,proc.clear_refs+VmHWM,peer,nnunet-3d_fullres,") for line in table)


@pytest.mark.slow
def test_monai_unet_peer_trains_tests_and_files_rows(tiny_prepared, tmp_path):
    results = tmp_path / "results.csv"
    command = [sys.executable, str(BENCHMARKS / "peer_monai_unet.py"), "--minutes", "0.05", "--val-every", "2",
               "--prepared", str(tiny_prepared.root), "--work", str(tmp_path / "work"), "--results", str(results)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stderr[-3000:]
    frame = read_results(results)
    assert set(frame["source"]) == {"peer"} and set(frame["variant"]) == {"monai-unet"}
    assert frame["class_name"].tolist() == tiny_prepared.class_names[1:]
    assert frame["dice"].between(0, 1).all() and (frame["n_test_cases"] == len(tiny_prepared.ids("test"))).all()
    row = frame.iloc[0]
    assert row["train_steps"] >= 1 and row["train_seconds"] > 0  # recorded; how long it took is no test's business
    assert row["peak_memory_bytes"] > 0 and row["memory_method"].startswith("proc.")
    assert row["train_peak_memory_bytes"] > 0
    details = json.loads((tmp_path / "work" / "peer-runs" / f"{row['run_id']}.json").read_text())
    assert details["budget_minutes"] == 0.05 and details["validations"] and details["train_shape"][-3:] == [16, 16, 32]
    assert details["validations"][-1][0] == row["train_steps"]  # the run ended with its final validation
    assert (tmp_path / "work" / "monai-unet" / f"{row['run_id']}.pt").is_file()


def test_monai_unet_peer_refuses_a_malformed_results_csv_before_training(tiny_prepared, tmp_path):
    bad = tmp_path / "results.csv"
    bad.write_text("name,score\nx,1\n")
    command = [sys.executable, str(BENCHMARKS / "peer_monai_unet.py"), "--minutes", "5", "--prepared",
               str(tiny_prepared.root), "--work", str(tmp_path / "work"), "--results", str(bad)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("peer_monai_unet.py: error:") and "is not a results CSV" in lines[0]
    assert not (tmp_path / "work").exists()
