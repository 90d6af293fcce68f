"""Training curves: every stage writes log.csv (steps, lr, validation Dice) and progress.png, continues them on
resume without repeating a step, adds TensorBoard events only when tensorboard is installed, and draws no random
number."""

import random

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import medseg_mem.training.curves as curves
from medseg_mem.core.files.checkpoint import load_checkpoint
from medseg_mem.training.curves import StageLog, columns
from medseg_mem.training.loop import train_stage
from test_train import interrupted_at_step_5, job

NAMES = ["class_1", "class_2"]  # the tiny task's foreground classes, as a job without meta names them


def test_a_stage_logs_every_step_and_validation_and_draws_its_progress(tmp_path, tiny_prepared):
    outcome = train_stage(job(tmp_path, tiny_prepared, steps=6, val_every=2), progress=False)
    log = pd.read_csv(tmp_path / "log.csv")
    assert list(log.columns) == columns(NAMES)
    assert log.step.tolist() == [1, 2, 3, 4, 5, 6]
    assert log.seconds.is_monotonic_increasing and np.allclose(log.lr, 3e-4) and log.loss.notna().all()
    validated = log.dropna(subset=["val_mean_dice"])
    assert validated.step.tolist() == [h["step"] for h in outcome.history]
    for (_, row), history in zip(validated.iterrows(), outcome.history):
        assert row.val_mean_dice == pytest.approx(history["mean_dice"], abs=1e-6)
        assert [row.val_dice_class_1, row.val_dice_class_2] == pytest.approx(history["dice"], abs=1e-6)
        assert row.loss == pytest.approx(history["loss"], rel=1e-5)  # one rank: the step's loss is the logged one
    with Image.open(tmp_path / "progress.png") as png:
        assert png.format == "PNG" and png.size == (880, 560)


def test_a_resumed_stage_continues_the_same_log_without_repeating_a_step(tmp_path, tiny_prepared, monkeypatch):
    train_stage(job(tmp_path / "straight", tiny_prepared), progress=False)
    interrupted_at_step_5(monkeypatch, lambda: train_stage(job(tmp_path / "resumed", tiny_prepared), progress=False))
    log = tmp_path / "resumed" / "log.csv"
    assert pd.read_csv(log).step.tolist() == [1, 2, 3, 4]
    with open(log, "a") as stream:  # as if it had died after writing steps past its last checkpoint, mid-row
        stream.write("5,9.9,0.5,0.0003,,,\n6,10.1,0.4")
    train_stage(job(tmp_path / "resumed", tiny_prepared), progress=False)
    straight, resumed = pd.read_csv(tmp_path / "straight" / "log.csv"), pd.read_csv(log)
    assert resumed.step.tolist() == [1, 2, 3, 4, 5, 6]
    same = [c for c in columns(NAMES) if c != "seconds"]  # the same training: the same numbers, bit for bit
    pd.testing.assert_frame_equal(straight[same], resumed[same])
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["step"] == 6


def test_tensorboard_events_are_written_when_it_is_installed(tmp_path, tiny_prepared):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train_stage(job(tmp_path, tiny_prepared, steps=4, val_every=2), progress=False)
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert [s.step for s in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [s.step for s in events.Scalars("val/mean_dice")] == [2, 4]
    assert {"train/lr", "val/dice_class_1", "val/dice_class_2"} <= set(events.Tags()["scalars"])


def test_without_tensorboard_nothing_changes_and_nothing_is_said(tmp_path, tiny_prepared, monkeypatch, capsys):
    monkeypatch.setattr(curves, "tensorboard_available", lambda: False)
    train_stage(job(tmp_path, tiny_prepared, steps=2, val_every=2), progress=False)
    assert not (tmp_path / "tensorboard").exists() and (tmp_path / "log.csv").is_file()
    assert capsys.readouterr() == ("", "")


def test_logging_draws_no_random_number(tmp_path):
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    before = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    with StageLog.open(tmp_path, NAMES) as log:
        for step in range(1, 5):
            log.step(step, step * 0.5, torch.tensor(1.0 / step), 1e-3)
        log.validation(4, [0.5, float("nan")], 0.5)
    assert (tmp_path / "progress.png").is_file()
    assert torch.equal(torch.get_rng_state(), before[0]) and np.array_equal(np.random.get_state()[1], before[1])
    assert random.getstate() == before[2]
    assert pd.read_csv(tmp_path / "log.csv").val_dice_class_2.isna().tolist() == [True] * 4


def test_steps_are_written_in_blocks_between_validations(tmp_path, monkeypatch):
    monkeypatch.setattr(curves, "FLUSH_EVERY", 3)
    log = StageLog.open(tmp_path, NAMES)
    for step in range(1, 8):
        log.step(step, float(step), torch.tensor(0.5), 1e-3)
    assert pd.read_csv(tmp_path / "log.csv").step.tolist() == [1, 2, 3, 4, 5, 6]  # step 7 waits for its validation
    log.validation(7, [0.1, 0.2], 0.15)
    log.close()
    assert pd.read_csv(tmp_path / "log.csv").val_mean_dice.tolist()[-1] == pytest.approx(0.15)
