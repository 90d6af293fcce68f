"""Deep supervision (``run --deep-supervision``): auxiliary heads in training only, nnU-Net's weighted loss, recorded in
checkpoints, resumed bit for bit, rebuilt for inference and left out of the exports; a 2-level U-Net is refused."""

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from monai.losses import DiceCELoss
from torch.nn import functional as F

from medseg_mem.core.files.checkpoint import load_checkpoint
from medseg_mem.cli import main
from medseg_mem.core.config import ModelConfig, TrainConfig
from medseg_mem.core.errors import OptionError
from medseg_mem.memory import MemoryReading
from medseg_mem.models.build import inference_state_dict, load_networks
from medseg_mem.models.label_net import LabelUNet3D
from medseg_mem.models.unet import UNet3D
from medseg_mem.models.deep_supervision import DeepSupervisionLoss
from medseg_mem.training.loop import StageJob, make_loss, train_stage
from medseg_mem.training.sampling import StageData
from medseg_mem.variants import get_variant
from test_train import interrupted_at_step_5

K = 3
DS_MODEL = ModelConfig(channels=(2, 4, 8), slab_size=8, downsample=0.5, deep_supervision=True)
BUNDLES = Path(__file__).resolve().parents[1] / "bundles"


def twins(channels=(2, 4, 8, 16), seed=0):
    """A plain and a deep-supervised U-Net built from the same seed."""
    torch.manual_seed(seed)
    plain = UNet3D(1, K, channels)
    torch.manual_seed(seed)
    return plain, UNet3D(1, K, channels, deep_supervision=True)


def test_the_heads_come_after_every_other_layer_so_a_seed_gives_the_same_main_weights():
    plain, supervised = twins()
    main_weights = supervised.state_dict()
    assert set(main_weights) - set(plain.state_dict()) == {f"aux_heads.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")}
    assert all(torch.equal(tensor, main_weights[name]) for name, tensor in plain.state_dict().items())


@pytest.mark.parametrize("grad", [False, True])
def test_in_eval_mode_the_network_returns_the_plain_networks_tensor(grad):
    plain, supervised = twins()
    x = torch.randn(2, 1, 9, 10, 11)
    with torch.set_grad_enabled(grad):
        out = supervised.eval()(x)
        assert isinstance(out, torch.Tensor) and torch.equal(out, plain.eval()(x))


def test_in_training_mode_it_returns_every_level_highest_resolution_first():
    plain, supervised = twins()
    x = torch.randn(2, 1, 9, 10, 11)
    outputs = supervised.train()(x)
    assert [tuple(o.shape) for o in outputs] == [(2, K, 9, 10, 11), (2, K, 5, 5, 6), (2, K, 3, 3, 3)]
    assert torch.equal(outputs[0], plain.train()(x))  # the top output is the plain network's
    label = torch.randint(0, K, (2, 1, 9, 10, 11))  # odd sizes: each level keeps ceil(size / 2**k) labels
    DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True), outputs=3)(outputs, label).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in supervised.aux_heads.parameters())


def test_the_loss_is_the_weighted_sum_over_nearest_downsampled_labels():
    torch.manual_seed(1)
    logits = [torch.randn(2, K, 8, 8, 4), torch.randn(2, K, 4, 4, 2), torch.randn(2, K, 2, 2, 1)]
    label = torch.randint(0, K, (2, 1, 8, 8, 4))
    plain = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    by_hand = 0.0
    for k, weight in enumerate((4 / 7, 2 / 7, 1 / 7)):  # 1, 1/2, 1/4 normalised
        small = F.interpolate(label.float(), size=logits[k].shape[2:], mode="nearest").long()  # voxel 2**k * i
        by_hand += weight * plain(logits[k], small)
    assert torch.allclose(DeepSupervisionLoss(plain, outputs=3)(logits, label), by_hand, rtol=0, atol=1e-6)


def test_monais_deep_supervision_loss_differs_only_in_how_it_downsamples_the_label():
    """Why ours is kept beside ``monai.losses.DeepSupervisionLoss`` (MONAI 1.6.1): given our weights it sums the same
    terms, but it resizes the label with ``F.interpolate(mode="nearest-exact")``, which refuses int64 labels and, on
    float ones, samples the centre of each ``2**k`` block (voxel ``2**k * i + 2**k // 2``) where ours (and PyTorch's
    ``nearest``) takes its first voxel: another loss. With our label downsampling swapped in the two are equal."""
    from monai.losses import DeepSupervisionLoss as MonaiDeepSupervisionLoss

    from medseg_mem.models.deep_supervision import downsampled_label, supervision_weights

    torch.manual_seed(2)
    logits = [torch.randn(2, K, 8, 8, 4), torch.randn(2, K, 4, 4, 2), torch.randn(2, K, 2, 2, 1)]
    label = torch.randint(0, K, (2, 1, 8, 8, 4))
    plain = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    ours = DeepSupervisionLoss(plain, outputs=3)(logits, label)
    monai = MonaiDeepSupervisionLoss(plain, weights=supervision_weights(3))
    with pytest.raises(NotImplementedError):
        monai(logits, label)  # int64 labels: "compute_indices_weights_nearest" not implemented for 'Long'
    assert not torch.allclose(monai(logits, label.float()), ours, rtol=0, atol=1e-3)
    centre = F.interpolate(label.float(), size=(4, 4, 2), mode="nearest-exact")
    assert torch.equal(centre, label[:, :, 1::2, 1::2, 1::2].float())
    monai.get_loss = lambda output, target: plain(output, downsampled_label(target, target.shape[2] // output.shape[2]))
    assert torch.equal(monai(logits, label), ours)


def test_make_loss_supervises_every_output_only_for_a_deep_supervised_model():
    stage, train = get_variant("full").stages()[0], TrainConfig()
    assert isinstance(make_loss(stage, train, None, DS_MODEL), DeepSupervisionLoss)
    assert make_loss(stage, train, None, DS_MODEL).weights == pytest.approx([2 / 3, 1 / 3])
    assert not isinstance(make_loss(stage, train, None, ModelConfig()), DeepSupervisionLoss)
    with pytest.raises(ValueError, match="expected 2 outputs"):
        make_loss(stage, train, None, DS_MODEL)(torch.zeros(1, K, 4, 4, 4), torch.zeros(1, 1, 4, 4, 4).long())


def ds_job(folder, dataset, steps=6):
    stage = get_variant("patch").stages()[0]
    config = TrainConfig(steps=steps, val_every=2, batch_size=2)
    data = StageData(dataset, stage, DS_MODEL, config, stage_index=0)
    return StageJob("patch", stage, 1, K, DS_MODEL, config, data, folder, torch.device("cpu"))


def test_a_deep_supervised_stage_trains_resumes_bit_for_bit_and_is_rebuilt(tmp_path, tiny_prepared, monkeypatch):
    train_stage(ds_job(tmp_path / "straight", tiny_prepared), progress=False)
    interrupted_at_step_5(monkeypatch, lambda: train_stage(ds_job(tmp_path / "resumed", tiny_prepared), progress=False))
    train_stage(ds_job(tmp_path / "resumed", tiny_prepared), progress=False)
    straight = load_checkpoint(tmp_path / "straight" / "last.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "last.pt")["state_dict"]
    assert straight["model"]["deep_supervision"] is True and "aux_heads.0.weight" in straight["state_dict"]
    assert all(torch.equal(tensor, resumed[name]) for name, tensor in straight["state_dict"].items())
    net = load_networks({"patch": tmp_path / "straight" / "last.pt"}, torch.device("cpu"))["patch"]
    assert net.deep_supervision and not net.training
    assert isinstance(net(torch.zeros(1, 1, 8, 8, 8)), torch.Tensor)


def test_deep_supervision_with_two_levels_is_refused_naming_the_option_and_channels():
    with pytest.raises(OptionError, match=r"--deep-supervision needs a U-Net of at least 3 levels.*--channels 8,16"):
        ModelConfig(channels=(8, 16), deep_supervision=True)
    ModelConfig(channels=(8, 16))  # without deep supervision two levels are fine
    result = CliRunner().invoke(main, ["run", "--deep-supervision", "--channels", "8,16", "--data", "nowhere"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert "--deep-supervision" in line and "8,16" in line and "nowhere" not in line  # before any data is read


def test_the_planner_counts_the_heads():
    from medseg_mem.memory.planner import plan_variant

    plain, supervised = ModelConfig(channels=(4, 8, 16)), ModelConfig(channels=(4, 8, 16), deep_supervision=True)
    for train in (None, TrainConfig(batch_size=1, channels_last=False)):  # inference, then training
        without = plan_variant("full", (1, 16, 16, 16), K, model=plain, train=train)
        with_heads = plan_variant("full", (1, 16, 16, 16), K, model=supervised, train=train)
        assert with_heads.resident_bytes > without.resident_bytes
    assert with_heads.traced_bytes > without.traced_bytes  # training: the heads' outputs and the loss terms


@pytest.fixture(scope="module")
def ds_run(tiny_prepared, tmp_path_factory):
    """A tiny deep-supervised patch run on the tiny task, evaluated with test-time mirroring: (run folder, results
    CSV, output)."""
    root = tmp_path_factory.mktemp("ds-run")
    args = ["--data", str(tiny_prepared.root), "--results", str(root / "r.csv"), "--runs", str(root / "runs")]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("medseg_mem.runner.run.measure_variant_memory",
                      lambda *a, **k: MemoryReading(0, "stub", "cpu"))  # fmt: skip
        result = CliRunner().invoke(main, ["run", "--variant", "patch", *args, "--steps", "2", "--val-every", "1",
                                           "--channels", "2,4,8", "--deep-supervision", "--tta", "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    (run,) = (root / "runs").iterdir()
    return run, root / "r.csv", result.output


def test_a_deep_supervised_run_records_both_options(ds_run):
    run, results, output = ds_run
    table = pd.read_csv(results)
    assert table.deep_supervision.all() and (table.tta == "0-1-2").all()
    assert "deep supervision" in output and "tta 0-1-2" in output
    assert json.loads((run / "run.json").read_text())["model"]["deep_supervision"] is True


def test_exports_leave_the_heads_behind_and_keep_the_main_output(ds_run, tmp_path):
    from medseg_mem.export.bundle import export_bundle

    run, _, _ = ds_run
    saved = load_checkpoint(run / "patch" / "best.pt")
    labels = LabelUNet3D(1, K, channels=(2, 4, 8)).eval()
    labels.load_state_dict(inference_state_dict(saved["state_dict"]))  # strict: exactly the plain U-Net's weights
    supervised = load_networks({"patch": run / "patch" / "best.pt"}, torch.device("cpu"))["patch"]
    x = torch.randn(1, 1, 8, 8, 16)
    with torch.inference_mode():
        assert torch.allclose(labels.logits(x), supervised(x), atol=1e-5)
    bundle = shutil.copytree(BUNDLES / "patch", tmp_path / "bundle", ignore=shutil.ignore_patterns("models"))
    export_bundle(run, bundle)
    weights = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert not any(name.startswith("aux_heads") for name in weights)
    LabelUNet3D(1, K, channels=(2, 4, 8)).load_state_dict(weights)


def test_predict_with_tta_on_both_engines(ds_run, tiny_prepared, tmp_path):
    pytest.importorskip("onnxruntime")
    run, _, _ = ds_run
    manifest = json.loads((tiny_prepared.root / "manifest.json").read_text())
    scan = Path(manifest["source"]) / manifest["cases"][0]["image"]
    labels = {}
    for engine in ("torch", "onnxruntime"):
        result = CliRunner().invoke(main, ["predict", str(scan), "--checkpoint", str(run), "--out", str(tmp_path / engine),
                                           "--tta", "--engine", engine, "--device", "cpu", "--quiet"])  # fmt: skip
        assert result.exit_code == 0, result.output
        assert "tta 0-1-2" in result.output
        (written,) = (tmp_path / engine).iterdir()
        labels[engine] = np.asarray(nib.load(str(written)).dataobj)
    assert (labels["torch"] == labels["onnxruntime"]).mean() >= 0.999
