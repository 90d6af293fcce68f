"""``medseg-mem run --init-from RUN``: fine-tune a trained run; its record, CSV column, compare, and refusals."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from medseg_mem.cli import main

TINY = ["--steps", "2", "--val-every", "1", "--channels", "2,4", "--quiet"]


def invoke(*args):
    return CliRunner().invoke(main, ["run", *map(str, args)])


def one_error(result, *fragments):
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, prepared_default):
    """A tiny trained ``full`` run on the embedded default: ``(run id, runs folder, results CSV)``."""
    root = tmp_path_factory.mktemp("init-from")
    runs, results = root / "runs", root / "results.csv"
    result = invoke("--variant", "full", "--data", prepared_default, "--runs", runs, "--results", results, *TINY)
    assert result.exit_code == 0, result.output
    return pd.read_csv(results).run_id.iloc[0], runs, results


def fine_tune(source_run, prepared_default, results: Path, *extra):
    run_id, runs, _ = source_run
    return invoke("--init-from", run_id, "--data", prepared_default, "--runs", runs, "--results", results,
                  "--steps", 2, "--val-every", 1, "--quiet", *extra)


def test_fine_tuned_run_is_recorded_in_run_json_csv_and_compare(source_run, prepared_default, tmp_path):
    run_id, runs, source_results = source_run
    results = tmp_path / "results.csv"
    results.write_text(source_results.read_text())
    result = fine_tune(source_run, prepared_default, results)
    assert result.exit_code == 0, result.output
    assert f"fine-tuned from run {run_id}" in result.output
    table = pd.read_csv(results, keep_default_na=False)
    new = table[table.run_id != run_id]
    assert set(new.init_from) == {run_id} and set(table[table.run_id == run_id].init_from) == {""}
    assert set(new.channels) == {"2-4"}  # the source run's network, not the profile's 8..128
    record = json.loads((runs / new.run_id.iloc[0] / "run.json").read_text())
    assert record["init_from"] == run_id and record["init_from_dir"] == str((runs / run_id).resolve())
    shown = CliRunner().invoke(main, ["compare", str(results)])
    assert shown.exit_code == 0, shown.output
    assert "full (fine-tuned)" in shown.output and f"full (fine-tuned) from {run_id}" in shown.output


def test_fine_tuning_repeats_bit_for_bit(source_run, prepared_default, tmp_path):
    weights = []
    for name in ("a", "b"):
        result = fine_tune(source_run, prepared_default, tmp_path / f"{name}.csv")
        assert result.exit_code == 0, result.output
        new_id = pd.read_csv(tmp_path / f"{name}.csv").run_id.iloc[0]
        weights.append(torch.load(source_run[1] / new_id / "full" / "best.pt", weights_only=True)["state_dict"])
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_stage_starts_from_the_source_weights(source_run):
    from medseg_mem.core.files.checkpoint import load_checkpoint
    from medseg_mem.models.build import build_network
    from medseg_mem.core.config import ModelConfig
    from medseg_mem.training.checkpoints import resume_state

    run_id, runs, _ = source_run
    best = runs / run_id / "full" / "best.pt"
    net = build_network(1, 3, ModelConfig(channels=(2, 4)))
    job = SimpleNamespace(folder=runs / "nowhere", init_weights=best)
    step, state = resume_state(job, net, None, None)
    saved = load_checkpoint(best)["state_dict"]
    assert step == 0 and state["best_step"] == 0
    assert all(torch.equal(net.state_dict()[k], saved[k]) for k in saved)


def test_refusals_are_one_line(source_run, prepared_default, tiny_prepared, tmp_path):
    run_id, runs, _ = source_run
    results = tmp_path / "r.csv"
    base = ["--runs", runs, "--results", results, "--quiet"]
    one_error(invoke("--init-from", "no-such-run", "--data", prepared_default, *base),
              "--init-from no-such-run", "no trained run", "run.json")
    one_error(invoke("--init-from", run_id, "--variant", "patch", "--data", prepared_default, *base),
              f"--init-from {run_id}", "is a full run", "--variant patch")
    one_error(invoke("--init-from", run_id, "--channels", "4,8", "--data", prepared_default, *base),
              "--channels 4,8", "--channels 2,4")
    one_error(invoke("--init-from", run_id, "--data", tiny_prepared.root, *base),
              "classes ['background', 'long_rod', 'short_rod']", "['background', 'left', 'right']")
    one_error(invoke("--init-from", run_id, "--resume", run_id, *base), "--resume")
    assert not results.exists()


def test_other_channels_are_refused(source_run, make_msd_task, tmp_path):
    from medseg_mem.core.prepare_config import PrepareConfig
    from medseg_mem.data.prepare import prepare

    task = make_msd_task(tmp_path, n_cases=3, channels=4)
    prepare(PrepareConfig(task_dir=task, out_dir=tmp_path / "four"), progress=False)
    run_id, runs, _ = source_run
    one_error(invoke("--init-from", run_id, "--data", tmp_path / "four", "--runs", runs, "--results",
                     tmp_path / "r.csv"), "channels ['MRI']", "['FLAIR', 'T1w', 't1gd', 'T2w']")


def test_older_csv_without_the_column_still_reads(tmp_path):
    from medseg_mem.report.results import read_results

    path = tmp_path / "old.csv"
    pd.DataFrame([{"run_id": "r", "timestamp": "2024-01-01T00:00:00Z", "dataset": "d", "variant": "full",
                   "class_name": "a", "class_index": 1, "dice": 0.5, "peak_memory_bytes": 1, "memory_method": "m",
                   "device": "cpu", "inference_seconds_per_case": 0.1, "train_steps": 1, "train_seconds": 1,
                   "seed": 0, "channels": "2-4", "loss": "dice", "slab_size": "", "downsample": "",
                   "n_test_cases": 1, "package_version": "0", "source": "run"}]).to_csv(path, index=False)
    frame = read_results(path)
    assert list(frame.init_from) == [""]
    assert CliRunner().invoke(main, ["compare", str(path)]).exit_code == 0
