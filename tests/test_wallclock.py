"""Training to a wall clock: the time limit, poly decay over the time spent, snapshots at marks, resume with the
time left, the cascade's sharing rule, and the rows the snapshots become. A fake clock advances a fixed number of
seconds per training step, so nothing here waits or depends on the machine's speed."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

import medseg_mem.training.loop as loop
from medseg_mem.core.changes import RunChanges
from medseg_mem.core.config import ModelConfig, RunRequest, TrainConfig
from medseg_mem.core.errors import OptionError
from medseg_mem.core.files.checkpoint import load_checkpoint
from medseg_mem.training.loop import StageJob, StageOutcome, train_stage
from medseg_mem.runner.run import run_variants
from medseg_mem.runner.settings import load_run_record, write_run_record
from medseg_mem.runner.snapshots import variant_snapshots
from medseg_mem.training.sampling import StageData
from medseg_mem.training.wallclock import StageTimes, stage_times
from medseg_mem.variants import get_variant

K = 3
MODEL = ModelConfig(channels=(2, 4), slab_size=8, downsample=0.5)
TINY = {"channels": (2, 4), "slab_size": 8, "downsample": 0.5, "batch_size": 2, "device": "cpu"}


class StepClock:
    """A fake wall clock: ``per_step`` seconds pass during each training step and ``per_validation`` during each
    validation; nothing else takes time. It records the learning rate of every step, and can interrupt the
    ``die_at``-th step.
    """

    def __init__(self, monkeypatch, per_step=10.0, start=1000.0, die_at=None, per_validation=0.0):
        self.now, self.steps, self.lrs = start, 0, []
        real, real_validate = loop.train_step, loop.validate

        def timed_validate(*args, **kwargs):
            self.now += per_validation
            return real_validate(*args, **kwargs)

        def timed_step(net, optimizer, *args, **kwargs):
            self.steps += 1
            if self.steps == die_at:
                raise KeyboardInterrupt("killed")
            self.lrs.append(optimizer.param_groups[0]["lr"])
            self.now += per_step
            return real(net, optimizer, *args, **kwargs)

        monkeypatch.setattr(loop, "train_step", timed_step)
        monkeypatch.setattr(loop, "validate", timed_validate)

    def __call__(self):
        return self.now


def job(folder, dataset, times=StageTimes(), variant="full", steps=20, val_every=100, **train):
    stage = get_variant(variant).stages()[0]
    config = TrainConfig(steps=steps, val_every=val_every, batch_size=2, **train)
    data = StageData(dataset, stage, MODEL, config)
    return StageJob(variant, stage, stage.in_channels(1, K, MODEL), K, MODEL, config, data, folder,
                    torch.device("cpu"), times=times)  # fmt: skip


def test_the_time_limit_stops_at_the_first_step_that_ends_past_it(tmp_path, tiny_prepared, monkeypatch):
    clock = StepClock(monkeypatch)
    outcome = train_stage(job(tmp_path, tiny_prepared, StageTimes(limit=55), val_every=4), False, clock)
    assert (outcome.steps, outcome.seconds, clock.steps) == (6, 60.0, 6)
    assert [h["step"] for h in outcome.history] == [4, 6]  # the stopping step is validated
    last = load_checkpoint(tmp_path / "last.pt")
    assert (last["step"], last["train_seconds"], last["training"]["stage_time_limit_seconds"]) == (6, 60.0, 55)


def test_steps_end_training_when_they_come_before_the_limit(tmp_path, tiny_prepared, monkeypatch):
    clock = StepClock(monkeypatch)
    outcome = train_stage(job(tmp_path, tiny_prepared, StageTimes(limit=600), steps=3), False, clock)
    assert (outcome.steps, outcome.seconds, [h["step"] for h in outcome.history]) == (3, 30.0, [3])


@pytest.mark.parametrize("limit, steps, fractions", [
    (60, 1000, [k / 6 for k in range(6)]),  # the clock binds: the decay runs over the time spent
    (600, 4, [k / 4 for k in range(4)]),  # the steps bind: the decay runs over the steps, as without a limit
])  # fmt: skip
def test_poly_decays_over_the_larger_of_the_time_and_the_step_fraction(tmp_path, tiny_prepared, monkeypatch, limit,
                                                                      steps, fractions):  # fmt: skip
    clock = StepClock(monkeypatch)
    train_stage(job(tmp_path, tiny_prepared, StageTimes(limit=limit), steps=steps, lr=1e-2, lr_schedule="poly"),
                False, clock)  # fmt: skip
    assert clock.lrs == pytest.approx([1e-2 * (1 - f) ** 0.9 for f in fractions])


def test_a_limit_that_is_never_reached_changes_no_weight(tmp_path, tiny_prepared, monkeypatch):
    train_stage(job(tmp_path / "plain", tiny_prepared, steps=4, val_every=2), False)
    train_stage(job(tmp_path / "timed", tiny_prepared, StageTimes(limit=1e9), steps=4, val_every=2), False)
    plain, timed = (load_checkpoint(tmp_path / name / "last.pt")["state_dict"] for name in ("plain", "timed"))
    assert all(torch.equal(plain[name], timed[name]) for name in plain)


def test_a_snapshot_keeps_the_best_checkpoint_when_training_passes_its_mark(tmp_path, tiny_prepared, monkeypatch):
    clock = StepClock(monkeypatch)
    outcome = train_stage(job(tmp_path, tiny_prepared, StageTimes(marks={30: 25.0}), steps=8), False, clock)
    assert outcome.snapshots == {30: {"seconds": 30.0, "step": 3}} and outcome.steps == 8
    assert [h["step"] for h in outcome.history] == [3, 8]  # validated at the mark, then at the end
    snapshot = load_checkpoint(tmp_path / "snap-30s.pt")  # digest-checked like every checkpoint
    assert snapshot["step"] == 3 and (tmp_path / "snap-30s.pt.sha256").is_file()
    assert load_checkpoint(tmp_path / "last.pt")["snapshots"] == outcome.snapshots


def test_periodic_validations_count_and_validations_only_for_a_snapshot_do_not(tmp_path, tiny_prepared,
                                                                               monkeypatch):  # fmt: skip
    clock = StepClock(monkeypatch, per_validation=5.0)
    times = StageTimes(limit=60, marks={30: 30.0})
    outcome = train_stage(job(tmp_path, tiny_prepared, times, val_every=2), False, clock)
    # step 2 at 20 s, validated (+5); step 3 at 35 s passes the mark, validated off the clock; step 4 at 45 s,
    # validated (+5); step 5 ends at 60 s: the limit
    assert outcome.snapshots == {30: {"seconds": 35.0, "step": 3}}
    assert (outcome.steps, outcome.seconds, [h["step"] for h in outcome.history]) == (5, 60.0, [2, 3, 4, 5])


def test_resume_trains_only_the_time_that_was_left(tmp_path, tiny_prepared, monkeypatch):
    times = StageTimes(limit=60)
    train_stage(job(tmp_path / "straight", tiny_prepared, times, val_every=2), False, StepClock(monkeypatch))
    with pytest.raises(KeyboardInterrupt):  # dies in step 5, after last.pt was written at step 4 (40 s)
        train_stage(job(tmp_path / "resumed", tiny_prepared, times, val_every=2), False,
                    StepClock(monkeypatch, die_at=5))  # fmt: skip
    clock = StepClock(monkeypatch, start=50_000.0)  # another process: its clock starts elsewhere
    resumed = train_stage(job(tmp_path / "resumed", tiny_prepared, times, val_every=2), False, clock)
    assert (clock.steps, resumed.steps, resumed.seconds) == (2, 6, 60.0)
    straight, again = (load_checkpoint(tmp_path / n / "last.pt")["state_dict"] for n in ("straight", "resumed"))
    assert all(torch.equal(straight[name], again[name]) for name in straight)
    clock = StepClock(monkeypatch)
    finished = train_stage(job(tmp_path / "resumed", tiny_prepared, times, val_every=2), False, clock)
    assert (clock.steps, finished.steps) == (0, 6)  # its time is spent: resuming trains nothing more


def outcome(seconds, steps=5, snapshots=None, folder="stage"):
    return StageOutcome(Path(folder) / "best.pt", 0.5, steps, steps, seconds, [], snapshots or {})


def test_each_stage_gets_an_equal_share_of_what_the_stages_before_it_left():
    train = TrainConfig(time_limit=10, snapshots=(4,))
    assert stage_times(train, [], 1) == StageTimes(600.0, {240: 240.0})
    assert stage_times(train, [], 2) == StageTimes(300.0, {240: 120.0})
    took_its_share = outcome(305.0, snapshots={240: {"seconds": 125.0, "step": 3}})
    assert stage_times(train, [took_its_share], 2) == StageTimes(295.0, {240: 115.0})
    ended_early = outcome(100.0)  # reached --steps before its share of the limit and of the mark
    assert stage_times(train, [ended_early], 2) == StageTimes(500.0, {240: 140.0})
    assert stage_times(TrainConfig(), [], 2) == StageTimes(None, {})


def test_a_resumed_stage_keeps_the_training_peak_its_first_process_recorded():
    from dataclasses import replace

    from medseg_mem.runner.snapshots import with_recorded_peaks

    resumed = {"stage1": replace(outcome(30.0), peak_bytes=10), "stage2": replace(outcome(30.0), peak_bytes=700)}
    earlier = {"trained": {"stage1": {"steps": 3, "peak_bytes": 500}}}  # stage 2 had not finished: no record
    peaks = {name: o.peak_bytes for name, o in with_recorded_peaks(resumed, earlier).items()}
    assert peaks == {"stage1": 500, "stage2": 700}
    assert with_recorded_peaks(resumed, {}) == resumed  # a new run


def test_a_snapshot_is_reached_when_the_last_stage_passed_its_mark():
    train = TrainConfig(time_limit=10, snapshots=(1, 4))
    first = outcome(100.0, steps=7, snapshots={60: {"seconds": 31.0, "step": 2}}, folder="stage1")
    second = outcome(500.0, steps=9, folder="stage2",
                     snapshots={60: {"seconds": 30.0, "step": 4}, 240: {"seconds": 150.0, "step": 8}})
    reached, missed = variant_snapshots(train, {"stage1": first, "stage2": second})
    assert missed == [] and [s.mark for s in reached] == [60, 240]
    at_one, at_four = reached
    assert (at_one.steps, at_one.seconds) == (6, 61.0)
    assert at_one.paths == {"stage1": first.best_path.parent / "snap-60s.pt",
                            "stage2": second.best_path.parent / "snap-60s.pt"}  # fmt: skip
    assert at_four.paths["stage1"] == first.best_path  # stage 1 ended before its share of 4 min
    assert (at_four.steps, at_four.seconds) == (7 + 8, 100.0 + 150.0)
    reached, missed = variant_snapshots(train, {"full": outcome(200.0, snapshots={60: {"seconds": 60, "step": 1}})})
    assert [s.mark for s in reached] == [60] and missed == [240]  # training ended at 3.3 min, before 4


@pytest.mark.parametrize("limit, marks, option", [
    (10, (20,), "--snapshots"), (10, (10,), "--snapshots"), (0, (), "--time-limit"), (-1, (), "--time-limit"),
    (None, (0,), "--snapshots"), (None, (-5,), "--snapshots"), (None, (1, 1.001), "--snapshots"),
    (float("nan"), (), "--time-limit"),
])  # fmt: skip
def test_bad_time_limits_and_marks_are_refused_naming_the_option(limit, marks, option):
    with pytest.raises(OptionError, match=f"^{option} "):
        TrainConfig(time_limit=limit, snapshots=marks)


def test_time_limit_and_snapshots_survive_run_json(tmp_path):
    train = TrainConfig(time_limit=15, snapshots=(10, 5))
    assert train.snapshots == (5.0, 10.0)
    write_run_record(tmp_path, {"run_id": "x"}, MODEL, train)
    assert load_run_record(tmp_path)["train"] == train


def request(tiny_prepared, tmp_path, variant, **train):
    changes = RunChanges.of(**{**TINY, "steps": 50, "val_every": 100, **train})
    return RunRequest((variant,), tiny_prepared.root, tmp_path / "results.csv", tmp_path / "runs",
                      changes=changes, progress=False)  # fmt: skip


def rows_by_budget(results):
    table = pd.read_csv(results)
    return {("final" if pd.isna(b) else int(b)): part for b, part in table.groupby("budget_seconds", dropna=False)}


def test_a_time_limited_run_files_the_final_and_snapshot_rows(tmp_path, tiny_prepared, monkeypatch):
    clock = StepClock(monkeypatch)
    (result,) = run_variants(request(tiny_prepared, tmp_path, "full", time_limit=1, snapshots=(0.5,)), print, clock)
    rows = rows_by_budget(tmp_path / "results.csv")
    assert sorted(rows, key=str) == [30, "final"] and all(len(part) == K - 1 for part in rows.values())
    final, snapshot = rows["final"], rows[30]
    assert (final.train_steps == 6).all() and (final.train_seconds == 60).all()
    assert (snapshot.train_steps == 3).all() and (snapshot.train_seconds == 30).all()
    assert (final.time_limit_seconds == 60).all() and (snapshot.time_limit_seconds == 60).all()
    assert (snapshot.run_id == result.run_id).all() and snapshot.dice.between(0, 1).all()
    assert (snapshot.peak_memory_bytes == final.peak_memory_bytes.iloc[0]).all()  # same networks, not re-measured
    run_dir = tmp_path / "runs" / result.run_id
    assert load_checkpoint(run_dir / "full" / "snap-30s.pt")["step"] <= 3
    record = json.loads((run_dir / "run.json").read_text())
    assert record["trained"]["full"].pop("peak_bytes") > 0  # what training added to the process's memory
    assert record["trained"]["full"].pop("process_peak_bytes") > 0  # the whole process at that peak
    assert record["trained"]["full"] == {"steps": 6, "seconds": 60.0, "stopped_by_time": True}
    assert record["train"]["time_limit"] == 1 and record["snapshots_taken"][0]["budget_seconds"] == 30


def test_the_cascade_shares_its_time_and_resumes_with_what_was_left(tmp_path, tiny_prepared, monkeypatch):
    asked = request(tiny_prepared, tmp_path, "cascade", time_limit=1, snapshots=(0.5,), val_every=1,
                    stage2_guidance="truth")  # a predicted-guidance cascade takes no snapshots (test_out_of_fold)
    with pytest.raises(KeyboardInterrupt):  # stage 1 trains steps 1-3, stage 2 dies in its second step
        run_variants(asked, print, StepClock(monkeypatch, die_at=5))
    (run_dir,) = (tmp_path / "runs").iterdir()
    clock = StepClock(monkeypatch, start=7_000.0)
    run_variants(RunRequest(runs_dir=tmp_path / "runs", resume=run_dir.name, data_dir=tiny_prepared.root,
                            results=tmp_path / "results.csv", progress=False), print, clock)  # fmt: skip
    assert clock.steps == 2  # stage 2's steps 2 and 3: its share, 60 s less stage 1's 30 s, minus the 10 s it had
    stage1, stage2 = (load_checkpoint(run_dir / stage / "last.pt") for stage in ("stage1", "stage2"))
    assert (stage1["step"], stage1["train_seconds"], stage2["step"], stage2["train_seconds"]) == (3, 30.0, 3, 30.0)
    assert stage1["snapshots"] == {30: {"seconds": 20.0, "step": 2}}  # its share of the mark: 15 s
    assert stage2["snapshots"] == {30: {"seconds": 10.0, "step": 1}}  # the rest of the mark: 30 - 20 s
    rows = rows_by_budget(tmp_path / "results.csv")
    assert (rows["final"].train_steps == 6).all() and (rows["final"].train_seconds == 60).all()
    assert (rows[30].train_steps == 3).all() and (rows[30].train_seconds == 30).all()
    assert (run_dir / "stage1" / "snap-30s.pt").is_file() and (run_dir / "stage2" / "snap-30s.pt").is_file()


@pytest.mark.parametrize("args, status, says", [
    (["--snapshots", "20", "--time-limit", "10"], 1, "--snapshots must each lie below --time-limit 10"),
    (["--time-limit", "0"], 2, "'--time-limit': must be a positive number of minutes"),
    (["--time-limit", "-1"], 2, "'--time-limit': must be a positive number of minutes"),
    (["--snapshots", "0"], 2, "'--snapshots': must be a positive number of minutes"),
    (["--snapshots", "5,-5"], 2, "'--snapshots': must be a positive number of minutes"),
    (["--snapshots", "5,x"], 2, "'--snapshots': must list training-time marks in minutes like 5,10"),
    (["--snapshots", "5,5"], 2, "'--snapshots': must list distinct marks"),
    (["--resume", "someid", "--time-limit", "5"], 2, "--resume continues a run with its saved settings"),
])  # fmt: skip
def test_bad_wall_clock_options_are_one_line_errors(tmp_path, args, status, says):
    from click.testing import CliRunner

    from medseg_mem.cli import main

    result = CliRunner().invoke(main, ["run", *args, "--data", str(tmp_path / "nothing"), "--quiet"])
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert result.exit_code == status and len(errors) == 1 and says in errors[0], result.output
    assert "Traceback" not in result.output


def test_run_help_states_how_the_cascade_shares_the_time_limit():
    from click.testing import CliRunner

    from medseg_mem.cli import main

    text = " ".join(CliRunner().invoke(main, ["run", "--help"]).output.split())
    assert ("each stage gets an equal share of what the stages before it left (stage 1 half, shared with its fold "
            "models under --stage2-guidance predicted; stage 2 the rest)") in text
    assert "validation included" in text and "poly then decays over the larger of the step and the time" in text
