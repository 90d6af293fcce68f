"""One typed source per setting: the CLI builds RunChanges, the configs have one serialiser, old records load."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from medseg_mem.cli import main
from medseg_mem.cli.run import MODEL_CHANGES, TRAIN_CHANGES, run
from medseg_mem.core.changes import ModelChanges, RunChanges, TrainChanges
from medseg_mem.core.config import InferenceConfig, ModelConfig, RunRequest, TrainConfig
from medseg_mem.runner.settings import load_run_record, resolve_settings, write_run_record

EMBEDDED = SimpleNamespace(name="SyntheticRods")


def names(cls) -> list:
    return [field.name for field in dataclasses.fields(cls)]


def test_the_changes_mirror_the_configs_field_for_field():
    assert names(ModelChanges) == names(ModelConfig) and names(TrainChanges) == names(TrainConfig)


def test_every_setting_option_of_run_is_a_config_field():
    settings = {"skip_empty_slabs", "foreground_oversample"} | set(MODEL_CHANGES) | set(TRAIN_CHANGES)
    others = {"variants", "budget_bytes", "memory_check", "data_dir", "results", "runs_dir", "resume", "nproc", "quiet",
              "overlap", "sw_batch_size", "tta", "tta_axes", "inference_precision", "init_from"}  # fmt: skip
    assert {param.name for param in run.params} == settings | others


def test_slab_size_from_the_command_line_reaches_the_model_config_typed(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr("medseg_mem.runner.run.run_variants", lambda request, echo: seen.append(request))
    result = CliRunner().invoke(main, ["run", "--slab-size", "8", "--channels", "4,8", "--any-slab",
                                       "--no-memory-check", "--data", str(tmp_path / "none")])  # fmt: skip
    assert result.exit_code == 0, result.output
    (request,) = seen
    assert request.changes == RunChanges(ModelChanges(channels=(4, 8), slab_size=8),
                                         TrainChanges(foreground_oversample=0.0))  # fmt: skip
    model, train = resolve_settings(request, EMBEDDED)
    assert (model.slab_size, model.channels, train.foreground_oversample) == (8, (4, 8), 0.0)
    assert (train.steps, train.lr) == (200, 3e-3)  # the rest: the embedded default's profile


def test_changes_replace_only_what_was_given_and_a_name_that_is_no_setting_is_refused():
    model, train = RunChanges.of(steps=7, slab_size=4).apply(ModelConfig(), TrainConfig())
    assert (model, train) == (ModelConfig(slab_size=4), TrainConfig(steps=7))
    with pytest.raises(TypeError):
        RunChanges.of(stepz=7)


@pytest.mark.parametrize("config", [ModelConfig(channels=(4, 8, 16), deep_supervision=True, guidance="label"),
                                    TrainConfig(snapshots=(1.0, 2.0), time_limit=3.0, optimizer="sgd"),
                                    InferenceConfig(overlap=0.25, tta=True, tta_axes=(0, 2))])  # fmt: skip
def test_the_serialiser_round_trips_through_json(config):
    text = json.dumps(config.to_dict())
    assert type(config).from_dict(json.loads(text)) == config


def test_run_json_is_what_the_previous_code_wrote_and_reads_back(tmp_path):
    """The previous code wrote ``dataclasses.asdict``; the serialiser writes the same JSON."""
    model, train = ModelConfig(channels=(4, 8)), TrainConfig(snapshots=(0.5,), time_limit=1.0)
    assert json.dumps(model.to_dict()) == json.dumps(dataclasses.asdict(model))
    assert json.dumps(train.to_dict()) == json.dumps(dataclasses.asdict(train))
    write_run_record(tmp_path, {"run_id": "x"}, model, train)
    record = load_run_record(tmp_path)
    assert (record["model"], record["train"]) == (model, train)


def test_an_older_run_json_and_checkpoint_model_still_load(tmp_path):
    """run.json from before ``channels_last``/``foreground_oversample``/``deep_supervision``; a checkpoint's model
    spec from before ``deep_supervision``, with the network's channels and classes beside the settings."""
    old_train = {k: v for k, v in dataclasses.asdict(TrainConfig()).items()
                 if k not in ("channels_last", "foreground_oversample")}  # fmt: skip
    old_model = {"channels": [4, 8], "slab_size": 16, "downsample": 0.3, "guidance": "onehot"}
    record = {"run_id": "x", "variant": "patch", "model": old_model, "train": {**old_train, "skip_empty_slabs": True}}
    (tmp_path / "run.json").write_text(json.dumps(record))
    loaded = load_run_record(tmp_path)
    assert loaded["model"] == ModelConfig(channels=(4, 8))
    assert (loaded["train"].channels_last, loaded["train"].foreground_oversample) == (False, 1.0)
    spec = {**old_model, "in_channels": 1, "num_classes": 3}
    assert ModelConfig.from_dict(spec) == ModelConfig(channels=(4, 8))


def test_a_run_json_with_an_unknown_setting_is_refused_in_one_line(tmp_path):
    from medseg_mem.core.errors import MedsegError

    write_run_record(tmp_path, {"run_id": "x"}, ModelConfig(), TrainConfig())
    record = json.loads((tmp_path / "run.json").read_text())
    record["model"]["wings"] = 2
    (tmp_path / "run.json").write_text(json.dumps(record))
    with pytest.raises(MedsegError, match="not a readable run record"):
        load_run_record(tmp_path)


def test_a_request_defaults_to_no_changes():
    assert RunRequest().changes.given() == {}
