"""The training loop: best checkpoint kept, resume after an interruption, checkpoints are untrusted input."""

import pickle
import weakref

import pytest
import torch

import medseg_mem.training.loop as train_module
from medseg_mem.core.config import ModelConfig, TrainConfig
from medseg_mem.core.errors import MedsegError
from medseg_mem.core.files.checkpoint import load_checkpoint, save_checkpoint
from medseg_mem.training.loop import StageJob, train_stage
from medseg_mem.training.sampling import StageData
from medseg_mem.variants import TrainedVariant, get_variant

K = 3
MODEL = ModelConfig(channels=(2, 4), slab_size=8, downsample=0.5)
PAYLOAD = {"variant": "full", "stage": "full", "step": 1, "state_dict": {}, "model": {}}


def job(folder, dataset, variant="patch", steps=6, val_every=2, stage=0, **train):
    chosen = get_variant(variant).stages()[stage]
    config = TrainConfig(steps=steps, val_every=val_every, batch_size=2, **train)
    data = StageData(dataset, chosen, MODEL, config, stage_index=stage)
    in_channels = chosen.in_channels(1, K, MODEL)
    return StageJob(variant, chosen, in_channels, K, MODEL, config, data, folder, torch.device("cpu"))


def test_trains_and_keeps_the_best_checkpoint(tmp_path, tiny_prepared):
    outcome = train_stage(job(tmp_path, tiny_prepared), progress=False)
    assert outcome.steps == 6 and len(outcome.history) == 3
    best = max(outcome.history, key=lambda h: h["mean_dice"])
    assert outcome.best_step == best["step"] and outcome.best_score == pytest.approx(best["mean_dice"])
    saved = load_checkpoint(outcome.best_path)
    assert saved["step"] == outcome.best_step and saved["variant"] == "patch" and saved["stage"] == "patch"
    assert saved["training"]["precision"] == "fp32" and saved["training"]["checkpointing"] is False
    assert saved["training"]["channels_last"] is True  # the default layout
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 6


def interrupted_at_step_5(monkeypatch, train) -> None:
    """Run ``train()`` with a training step that dies during step 5 (after ``last.pt`` was written at step 4),
    then put the real step back."""
    calls, real_step = {"n": 0}, train_module.train_step

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train()
    monkeypatch.setattr(train_module, "train_step", real_step)


@pytest.mark.parametrize("recipe", [{}, {"optimizer": "sgd", "augment": "nnunet", "foreground_oversample": 0.5}])
def test_resume_continues_an_interrupted_run_bit_for_bit(tmp_path, tiny_prepared, monkeypatch, recipe):
    reference = train_stage(job(tmp_path / "straight", tiny_prepared, **recipe), progress=False)
    interrupted_at_step_5(monkeypatch, lambda: train_stage(job(tmp_path / "resumed", tiny_prepared, **recipe),
                                                           progress=False))  # fmt: skip
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["step"] == 4
    resumed = train_stage(job(tmp_path / "resumed", tiny_prepared, **recipe), progress=False)
    assert [h["step"] for h in resumed.history] == [2, 4, 6]
    final_straight = load_checkpoint(tmp_path / "straight" / "last.pt")["state_dict"]
    final_resumed = load_checkpoint(tmp_path / "resumed" / "last.pt")["state_dict"]
    for name, tensor in final_straight.items():
        assert torch.equal(tensor, final_resumed[name]), name
    assert resumed.best_score == reference.best_score


def test_same_seed_same_weights_other_seed_other_weights(tmp_path, tiny_prepared):
    weights = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        train_stage(job(tmp_path / name, tiny_prepared, variant="full", steps=2, seed=seed), progress=False)
        weights[name] = load_checkpoint(tmp_path / name / "last.pt")["state_dict"]
    assert all(torch.equal(weights["a"][k], weights["b"][k]) for k in weights["a"])
    assert not all(torch.equal(weights["a"][k], weights["c"][k]) for k in weights["a"])


LEVERS = [("bf16", False, True), ("fp32", True, True), ("bf16", True, True), ("fp16", False, True), ("bf16", True, False)]


@pytest.mark.parametrize("precision,checkpointing,channels_last", LEVERS)
def test_memory_levers_train_and_are_recorded(tmp_path, tiny_prepared, precision, checkpointing, channels_last):
    options = dict(precision=precision, checkpointing=checkpointing, channels_last=channels_last)
    outcome = train_stage(job(tmp_path, tiny_prepared, variant="full", steps=2, **options), progress=False)
    saved = load_checkpoint(outcome.best_path)
    assert saved["training"]["precision"] == precision and saved["training"]["checkpointing"] is checkpointing
    assert saved["training"]["channels_last"] is channels_last
    assert all(torch.isfinite(t.float()).all() for t in saved["state_dict"].values())
    assert all(t.dtype != torch.bfloat16 for t in saved["state_dict"].values())  # master weights stay fp32


def test_class_weights_are_used_and_recorded(tmp_path, tiny_prepared):
    weighted = job(tmp_path, tiny_prepared, variant="full", steps=2)
    weighted.class_weights = (1.0, 2.5, 4.0)
    outcome = train_stage(weighted, progress=False)
    assert load_checkpoint(outcome.best_path)["training"]["class_weights"] == [1.0, 2.5, 4.0]


def test_guidance_noise_trains_the_cascade_stage_2_and_is_recorded(tmp_path, tiny_prepared):
    outcome = train_stage(job(tmp_path, tiny_prepared, variant="cascade", stage=1, steps=2, guidance_noise=0.5),
                          progress=False)  # fmt: skip
    assert load_checkpoint(outcome.best_path)["training"]["guidance_noise"] == 0.5


def test_sgd_trains_with_nesterov_momentum_and_is_recorded(tmp_path, tiny_prepared):
    one_step = job(tmp_path / "one", tiny_prepared, variant="full", steps=1, val_every=1, optimizer="sgd", lr=1e-2)
    train_stage(one_step, progress=False)
    outcome = train_stage(job(tmp_path / "sgd", tiny_prepared, variant="full", steps=3, val_every=3, optimizer="sgd",
                              lr=1e-2), progress=False)  # fmt: skip
    saved = load_checkpoint(tmp_path / "sgd" / "last.pt")
    assert saved["training"]["optimizer"] == "sgd" and load_checkpoint(outcome.best_path)["training"]["lr"] == 1e-2
    (group,) = saved["optimizer"]["param_groups"]
    assert group["momentum"] == 0.99 and group["nesterov"] is True and group["weight_decay"] == 3e-5
    buffers = [state["momentum_buffer"] for state in saved["optimizer"]["state"].values()]
    assert len(buffers) == len(group["params"])
    assert all(buffer.abs().sum() > 0 for buffer in buffers)  # the momentum SGD carries from step to step
    after_one = load_checkpoint(tmp_path / "one" / "last.pt")["state_dict"]
    assert not all(torch.equal(after_one[k], saved["state_dict"][k]) for k in after_one)  # steps 2, 3 moved it


def test_sgd_without_lr_trains_at_nnunets_rate_and_adam_at_the_profiles():
    from types import SimpleNamespace

    from medseg_mem.core.changes import TrainChanges, RunChanges
    from medseg_mem.core.config import RunRequest
    from medseg_mem.runner.settings import resolve_settings

    dataset = SimpleNamespace(name="Hippocampus")
    lr = {name: resolve_settings(RunRequest(changes=RunChanges(train=changes)), dataset)[1].lr
          for name, changes in (("adam", TrainChanges()), ("sgd", TrainChanges(optimizer="sgd")),
                                ("sgd 3e-3", TrainChanges(optimizer="sgd", lr=3e-3)))}  # fmt: skip
    assert lr == {"adam": 3e-4, "sgd": 1e-2, "sgd 3e-3": 3e-3}


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_checkpoint_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "medseg-mem-checkpoint/1", "payload": Evil()}, path)
    with pytest.raises(MedsegError, match="cannot be read safely"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [{"hello": 1}, {"format": "medseg-mem-checkpoint/1", "variant": "full"}])
def test_checkpoint_of_the_wrong_kind_is_refused(tmp_path, content):
    path = tmp_path / "other.pt"
    torch.save(content, path)
    with pytest.raises(MedsegError, match="other.pt"):
        load_checkpoint(path)


def test_garbage_and_missing_checkpoints(tmp_path):
    (tmp_path / "junk.pt").write_bytes(pickle.dumps([1, 2]) + b"garbage")
    with pytest.raises(MedsegError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(MedsegError, match="no such file"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"variant": "full", "stage": "full", "step": 1, "state_dict": {}, "model": {}})
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError):
        save_checkpoint(path, {"variant": "full", "stage": "full", "step": 2, "state_dict": {}, "model": {}})
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt", "ckpt.pt.sha256"]


def test_a_run_recorded_before_channels_last_resumes_contiguous(tmp_path):
    """``run.json`` of an older run has no ``channels_last``: it trained contiguous, so it resumes contiguous."""
    import json

    from medseg_mem.runner.settings import load_run_record, write_run_record

    write_run_record(tmp_path, {"run_id": "old"}, MODEL, TrainConfig())
    record = json.loads((tmp_path / "run.json").read_text())
    del record["train"]["channels_last"]
    (tmp_path / "run.json").write_text(json.dumps(record))
    assert TrainConfig().channels_last is True and load_run_record(tmp_path)["train"].channels_last is False


@pytest.mark.parametrize("skip, oversample", [(True, 1.0), (False, 0.0)])
def test_a_run_recorded_with_skip_empty_slabs_resumes_with_that_oversampling(tmp_path, skip, oversample):
    """``run.json`` of an older run has ``skip_empty_slabs``: it resumes drawing the same slabs."""
    import json

    from medseg_mem.runner.settings import load_run_record, write_run_record

    write_run_record(tmp_path, {"run_id": "old"}, MODEL, TrainConfig())
    record = json.loads((tmp_path / "run.json").read_text())
    del record["train"]["foreground_oversample"], record["train"]["optimizer"], record["train"]["augment"]
    (tmp_path / "run.json").write_text(json.dumps({**record, "train": {**record["train"], "skip_empty_slabs": skip}}))
    train = load_run_record(tmp_path)["train"]
    assert train.foreground_oversample == oversample and train.optimizer == "adam" and train.augment == "none"


def test_every_checkpoint_gets_a_sha256_that_load_checks(tmp_path):
    from medseg_mem.core.files.digest import sha256_file, sidecar

    path = save_checkpoint(tmp_path / "best.pt", {**PAYLOAD, "state_dict": {"w": torch.arange(64.0)}})
    assert sidecar(path).read_text() == f"{sha256_file(path)}  best.pt\n"
    raw = bytearray(path.read_bytes())
    at = raw.index(torch.arange(64.0).numpy().tobytes()[:64])
    raw[at : at + 64] = bytes(64)  # 64 bytes inside the weight tensor: the pickle still loads
    path.write_bytes(bytes(raw))
    with pytest.raises(MedsegError, match=r"best.pt: SHA-256 mismatch, the file was modified or damaged") as error:
        load_checkpoint(path)
    assert "\n" not in str(error.value)
    sidecar(path).unlink()  # a checkpoint written before digests existed still loads (unchecked)
    assert load_checkpoint(path)["state_dict"]["w"][:16].eq(0).all()


def killed(*args, **kwargs):
    raise KeyboardInterrupt("killed")


def test_a_crash_between_the_renames_leaves_a_checkpoint_that_matches_its_digest(tmp_path, monkeypatch):
    import medseg_mem.core.files.atomic as atomic

    path = save_checkpoint(tmp_path / "last.pt", {**PAYLOAD, "step": 1})
    monkeypatch.setattr(atomic.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):  # killed after the new digest was staged, before the rename
        save_checkpoint(path, {**PAYLOAD, "step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    monkeypatch.setattr("medseg_mem.core.files.digest.settle_digest", killed)
    with pytest.raises(KeyboardInterrupt):  # killed after the rename, before the old digest was dropped
        save_checkpoint(path, {**PAYLOAD, "step": 3})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 3 and len((tmp_path / "last.pt.sha256").read_text().splitlines()) == 2


def test_a_flipped_pickle_byte_says_damaged_not_utf8(tmp_path):
    path = save_checkpoint(tmp_path / "best.pt", {**PAYLOAD, "meta": {"class_names": ["a", "b"]}})
    (tmp_path / "best.pt.sha256").unlink()
    raw = bytearray(path.read_bytes())
    raw[raw.index(b"class_names")] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(MedsegError, match="best.pt: the file is damaged or not a medseg-mem checkpoint") as error:
        load_checkpoint(path)
    assert "utf-8" not in str(error.value) and "\n" not in str(error.value)


def test_a_checkpoint_write_that_fails_midway_keeps_the_previous_one(tmp_path, monkeypatch):
    import errno
    import io

    from medseg_mem.core.files.atomic import WriteError

    path = save_checkpoint(tmp_path / "last.pt", {**PAYLOAD, "step": 1})
    before, digest = path.read_bytes(), (tmp_path / "last.pt.sha256").read_bytes()
    real_save = torch.save

    def half_save(obj, target, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        open(target, "wb").write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(WriteError, match=r"cannot write .*last.pt: No space left on device; the previous last.pt"):
        save_checkpoint(path, {**PAYLOAD, "step": 2})
    assert path.read_bytes() == before and (tmp_path / "last.pt.sha256").read_bytes() == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "last.pt.sha256"]


class CountingCases:
    """Val / test cases whose tensors are counted while alive: ``most`` is the most cases alive at once."""

    def __init__(self, count: int = 4) -> None:
        self.ids, self.alive, self.most = [f"case{i}" for i in range(count)], weakref.WeakSet(), 0

    def pair(self):
        image, label = torch.rand(1, 1, 6, 6, 8), torch.zeros(1, 1, 6, 6, 8, dtype=torch.uint8)
        self.alive.add(image)
        self.most = max(self.most, len(self.alive))
        return image, label

    def validation_ids(self):
        return list(self.ids)

    def validation_pair(self, case_id, device=None):
        return self.pair()

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        if not 0 <= index < len(self.ids):
            raise IndexError(index)
        return self.pair()


@pytest.mark.parametrize("variant", ["full", "patch"])
def test_validation_and_evaluation_hold_one_case_at_a_time(tmp_path, variant):
    from medseg_mem.runner.evaluation import evaluate_variant

    stage = get_variant(variant).stages()[0]
    net = torch.nn.Conv3d(1, K, 1)
    cases = CountingCases()
    validation_job = StageJob(variant, stage, 1, K, MODEL, TrainConfig(), cases, tmp_path, torch.device("cpu"))
    assert len(train_module.validate(validation_job, net)) == K - 1 and cases.most == 1
    evaluated = CountingCases()
    run = TrainedVariant(get_variant(variant), {stage.name: net}, MODEL, K)
    evaluate_variant(run, evaluated, torch.device("cpu"))
    assert evaluated.most == 1
