"""The training loop: best checkpoint kept, resume after an interruption, checkpoints are untrusted input."""

import pickle

import pytest
import torch

import medseg_mem.train as train_module
from medseg_mem.checkpoint import load_checkpoint, save_checkpoint
from medseg_mem.config import ModelConfig, TrainConfig
from medseg_mem.errors import MedsegError
from medseg_mem.train import StageJob, train_stage
from medseg_mem.variants import get_variant

K = 3
MODEL = ModelConfig(channels=(2, 4), slab_size=8, downsample=0.5)


def pairs(n=3, size=(8, 8, 20)):
    generator = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        label = torch.zeros(1, *size, dtype=torch.long)
        label[:, 2:5, 2:5, 3:15], label[:, 5:7, 5:7, 8:12] = 1, 2
        out.append((torch.randn(1, *size, generator=generator) + label.float(), label))
    return out


def job(folder, variant="patch", steps=6, val_every=2):
    stage = get_variant(variant).stages()[0]
    data = pairs()
    return StageJob(variant, stage, 1, K, MODEL, TrainConfig(steps=steps, val_every=val_every, batch_size=2),
                    data, data[:1], folder, torch.device("cpu"))  # fmt: skip


def test_trains_and_keeps_the_best_checkpoint(tmp_path):
    outcome = train_stage(job(tmp_path), progress=False)
    assert outcome.steps == 6 and len(outcome.history) == 3
    best = max(outcome.history, key=lambda h: h["mean_dice"])
    assert outcome.best_step == best["step"] and outcome.best_score == pytest.approx(best["mean_dice"])
    saved = load_checkpoint(outcome.best_path)
    assert saved["step"] == outcome.best_step and saved["variant"] == "patch" and saved["stage"] == "patch"
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 6


def test_resume_continues_an_interrupted_run_from_its_checkpoint(tmp_path, monkeypatch):
    reference = train_stage(job(tmp_path / "straight"), progress=False)
    calls = {"n": 0}
    real_draw = train_module.draw_batch

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # dies during step 5, after last.pt was written at step 4
            raise KeyboardInterrupt
        return real_draw(*args, **kwargs)

    monkeypatch.setattr(train_module, "draw_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_stage(job(tmp_path / "resumed"), progress=False)
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["step"] == 4
    monkeypatch.setattr(train_module, "draw_batch", real_draw)
    resumed = train_stage(job(tmp_path / "resumed"), progress=False)
    assert [h["step"] for h in resumed.history] == [2, 4, 6]
    final_straight = load_checkpoint(tmp_path / "straight" / "last.pt")["state_dict"]
    final_resumed = load_checkpoint(tmp_path / "resumed" / "last.pt")["state_dict"]
    for name, tensor in final_straight.items():
        assert torch.allclose(tensor.float(), final_resumed[name].float(), atol=1e-5), name
    assert resumed.best_score == pytest.approx(reference.best_score, abs=1e-5)


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
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]
