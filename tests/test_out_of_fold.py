"""The cascade's stage 2 trained on stage 1's out-of-fold predictions (``--stage2-guidance predicted``): the folds,
the fold models and their predictions, stage 2 guided by them, the shared clock, resume, and the rows."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from medseg_mem.core.changes import RunChanges
from medseg_mem.core.config import RunRequest, TrainConfig
from medseg_mem.core.errors import MedsegError, OptionError
from medseg_mem.runner.out_of_fold import folds, predict_cases
from medseg_mem.runner.run import run_variants
from medseg_mem.runner.variant import check_snapshots
from medseg_mem.training.guidance_files import guidance_path
from medseg_mem.training.sampling import StageData
from medseg_mem.variants import get_variant
from test_wallclock import MODEL, TINY, StepClock

PREDICTED = {"stage2_guidance": "predicted"}


def request(tiny_prepared, tmp_path, steps=3, **train):
    changes = RunChanges.of(**{**TINY, "steps": steps, "val_every": 1, **PREDICTED, **train})
    return RunRequest(("cascade",), tiny_prepared.root, tmp_path / "results.csv", tmp_path / "runs",
                      changes=changes, progress=False)  # fmt: skip


@pytest.mark.parametrize("n, k", [(10, 2), (11, 3), (5, 5)])
def test_folds_partition_the_cases_evenly_and_depend_only_on_the_seed(n, k):
    ids = [f"case_{i:02d}" for i in range(n)]
    parts = folds(ids, k, seed=0)
    assert sorted(sum(parts, [])) == ids and len(parts) == k
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert folds(ids, k, seed=0) == parts
    assert n < 10 or folds(ids, k, seed=1) != parts


def test_fewer_train_cases_than_folds_is_an_error_naming_the_option():
    with pytest.raises(MedsegError, match="--guidance-folds 5: the train split has 3 case"):
        folds(["a", "b", "c"], 5, seed=0)


@pytest.mark.parametrize("changes, option", [
    ({"stage2_guidance": "oracle"}, "--stage2-guidance"), ({"guidance_folds": 1}, "--guidance-folds"),
    ({"guidance_folds": 2.5}, "--guidance-folds"),
])  # fmt: skip
def test_bad_stage2_guidance_settings_name_the_option(changes, option):
    with pytest.raises(OptionError, match=f"^{option} "):
        TrainConfig(**changes)


def test_stage_2_trains_and_validates_on_the_predicted_labels(tmp_path, tiny_prepared):
    model, stage = MODEL, get_variant("cascade").stages()[1]
    for case_id in tiny_prepared.ids("train") + tiny_prepared.ids("val"):
        shape = stage.low_label(torch.zeros(1, 1, *tiny_prepared.shape(case_id)[-3:]), model, 3).shape[2:]
        np.save(guidance_path(tmp_path, case_id), np.full(shape, 2, dtype=np.uint8))  # "class 2 everywhere"
    data = StageData(tiny_prepared, stage, model, TrainConfig(batch_size=2, steps=1), guidance=tmp_path)
    x, _ = next(data.batches(first_step=0))
    val_source, _ = data.validation_pair(tiny_prepared.ids("val")[0])
    for inputs in (x, val_source.cut(0, 16, -1)):  # onehot guidance: class 1's channel, then class 2's; 20 slices: a slab holds >= 4
        guide = inputs[:, -2:, :, :, :4]
        assert guide[:, 0].eq(0).all() and guide[:, 1].eq(1).all()


def test_a_cascade_with_predicted_guidance_files_out_of_fold_predictions(tmp_path, tiny_prepared):
    (result,) = run_variants(request(tiny_prepared, tmp_path), print)
    run_dir = tmp_path / "runs" / result.run_id
    train_ids, val_ids = tiny_prepared.ids("train"), tiny_prepared.ids("val")
    for index, held_out in enumerate(folds(train_ids, 2, seed=0)):
        fold = run_dir / "stage1" / "folds" / str(index) / "best.pt"
        again = tmp_path / f"again-{index}"
        predict_cases(fold, get_variant("cascade").stages()[0], MODEL, tiny_prepared, torch.device("cpu"), held_out,
                      again)  # fmt: skip
        for case_id in held_out:  # each train case is predicted by the fold model that did not train on it
            assert np.array_equal(np.load(guidance_path(run_dir / "guidance", case_id)),
                                  np.load(guidance_path(again, case_id)))  # fmt: skip
    stored = [np.load(guidance_path(run_dir / "guidance", case_id)) for case_id in train_ids + val_ids]
    assert all(array.dtype == np.uint8 and array.ndim == 3 for array in stored)
    record = json.loads((run_dir / "run.json").read_text())
    assert list(record["trained"]) == ["stage1", "stage1/fold-0", "stage1/fold-1", "stage2"]
    for folder in ("stage1", "stage1/folds/0", "stage1/folds/1", "stage2"):  # every model logs its own curves
        assert pd.read_csv(run_dir / folder / "log.csv").step.tolist() == [1, 2, 3]
        assert (run_dir / folder / "progress.png").stat().st_size > 0
    rows = pd.read_csv(tmp_path / "results.csv")
    assert (rows.stage2_guidance == "predicted-2fold").all() and (rows.train_steps == 4 * 3).all()
    assert (rows.train_peak_memory_bytes > 0).all()


def test_fold_models_share_stage_1s_clock_and_are_not_trained_again_on_resume(tmp_path, tiny_prepared,
                                                                              monkeypatch):  # fmt: skip
    asked = request(tiny_prepared, tmp_path, steps=100, time_limit=1)
    with pytest.raises(KeyboardInterrupt):  # stage 1 and its 2 fold models: 30 s / 3 = one 10 s step each
        run_variants(asked, print, StepClock(monkeypatch, die_at=5))  # dies in stage 2's second step
    (run_dir,) = (tmp_path / "runs").iterdir()
    clock = StepClock(monkeypatch, start=9_000.0)
    run_variants(RunRequest(runs_dir=tmp_path / "runs", resume=run_dir.name, data_dir=tiny_prepared.root,
                            results=tmp_path / "results.csv", progress=False), print, clock)  # fmt: skip
    assert clock.steps == 2  # stage 2's steps 2 and 3 (60 s less the 30 s of stage 1 and its folds)
    trained = json.loads((run_dir / "run.json").read_text())["trained"]
    assert {stage: t["steps"] for stage, t in trained.items()} == {
        "stage1": 1, "stage1/fold-0": 1, "stage1/fold-1": 1, "stage2": 3}
    rows = pd.read_csv(tmp_path / "results.csv")
    assert (rows.train_steps == 6).all() and (rows.train_seconds == 60).all()


@pytest.mark.parametrize("args, says", [
    (["--stage2-guidance", "oracle"], "'--stage2-guidance': 'oracle' is not one of 'truth', 'predicted'"),
    (["--guidance-folds", "1"], "'--guidance-folds': 1 is not in the range x>=2"),
    (["--stage2-guidance", "predicted", "--time-limit", "10", "--snapshots", "5"],
     "--snapshots cannot be taken of a cascade trained with --stage2-guidance predicted"),
])  # fmt: skip
def test_bad_stage2_guidance_options_are_one_line_errors(tmp_path, args, says):
    from click.testing import CliRunner

    from medseg_mem.cli import main

    result = CliRunner().invoke(main, ["run", *args, "--data", str(tmp_path / "nothing"), "--quiet"])
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert result.exit_code in (1, 2) and len(errors) == 1 and says in errors[0], result.output
    assert "Traceback" not in result.output


def test_snapshots_are_refused_for_a_predicted_guidance_cascade_only(tmp_path, tiny_prepared):
    asked = request(tiny_prepared, tmp_path, time_limit=1, snapshots=(0.5,))  # the cascade, predicted guidance
    with pytest.raises(OptionError, match="^--snapshots cannot be taken of a cascade .* add --stage2-guidance truth"):
        run_variants(asked, print)
    assert not list((tmp_path / "runs").glob("*/run.json"))  # refused before any run was started
    check_snapshots(["full", "patch"], TrainConfig(stage2_guidance="predicted", time_limit=1, snapshots=(0.5,)))
    check_snapshots(["cascade"], TrainConfig(stage2_guidance="truth", time_limit=1, snapshots=(0.5,)))
