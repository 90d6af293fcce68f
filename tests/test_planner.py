"""Planner: structural live-set tracing, calibration, predictions that follow the network's structure, and the
training-memory levers (precision, checkpointing, batch, the loader's host memory)."""

import dataclasses

import pytest
import torch
from monai.losses import DiceCELoss

from medseg_mem.core.config import ModelConfig, TrainConfig
from medseg_mem.core.errors import OptionError
from medseg_mem.memory.calibration import (
    Calibration,
    calibrate,
    calibration_key,
    fit,
    load_calibration,
    save_calibration,
)
from medseg_mem.core.units import format_bytes, parse_bytes
from medseg_mem.memory import measure_peak
from medseg_mem.memory.planner import loader_host_bytes, plan_variant
from medseg_mem.memory.trace import LiveSetTracer
from medseg_mem.training.calibration_step import training_setup

TINY = ModelConfig(channels=(4, 8, 16))
#: The planner's former training defaults: one sample per step, contiguous weights, the default 1 GiB cache.
ONE = TrainConfig(batch_size=1, channels_last=False)
GB = 10**9


def full_setup(shape, classes, channels):
    """Measured counterpart of ``plan_variant("full", ...)``: the full variant's segment on a random image."""
    from medseg_mem.models.unet import UNet3D
    from medseg_mem.models.build import channels_last_layout
    from medseg_mem.variants import TrainedVariant, get_variant

    torch.manual_seed(0)
    model, variant = ModelConfig(channels=channels), get_variant("full")
    nets = {"full": channels_last_layout(UNet3D(shape[0], classes, channels).eval())}  # as predict loads them
    image = torch.randn((1, *shape))
    run = TrainedVariant(variant, nets, model, classes)
    return lambda: run.segment(image)


def test_tracer_counts_live_storages_once():
    x = torch.zeros(1000, device="meta")
    with torch.inference_mode(), LiveSetTracer([x], all_inside=True) as tracer:
        y = x + 1
        view = y[:10]
        y.mul_(2)
        z = y * 2
        del y
        w = z[:10] + view
    assert tracer.trace.peak() == 2 * 4000 + 40  # y (kept alive by its view), z, w
    del w, z, view


def test_tracer_separates_network_from_the_rest():
    net = torch.nn.Conv3d(1, 2, 1, device="meta")
    x = torch.zeros(1, 1, 10, 10, 10, device="meta")
    with torch.inference_mode(), LiveSetTracer([x, *net.parameters()], [net]) as tracer:
        out = net(x) * 2
    assert tracer.trace.inside_peak() == 8000
    assert tracer.trace.peak(multiplier=2.0) == 2 * 8000 + 8000
    del out


@pytest.mark.parametrize("variant", ["full", "patch", "cascade"])
def test_monotone_in_voxels(variant):
    """The tensors grow with the voxels (on CUDA no CPU backend buffers are added: see the next test)."""
    sizes = [(1, 32, 32, 32), (1, 48, 48, 40), (1, 64, 64, 64)]
    predicted = [plan_variant(variant, s, 3, TINY, device="cuda").predicted_bytes for s in sizes]
    assert predicted == sorted(predicted) and predicted[0] < predicted[-1]


def test_cpu_plans_the_slow_convolutions_column_buffers():
    """On a CPU a float32 convolution with N * C * D * H <= 20480 runs on PyTorch's slow kernels, which unfold its
    input (27 values per input channel and output voxel): a 48x48 slab's 8-channel decoder step does, a 64x64
    one runs on oneDNN, so the smaller slab plans more (the embedded default's full: 181 MiB of 187 measured)."""
    small, large = (plan_variant("patch", (1, side, side, 40), 3, TINY) for side in (48, 64))
    columns = 8 * 27 * 48 * 48 * 16 * 4  # the first decoder convolution's input: 4 + 4 channels
    assert small.traced_bytes - plan_variant("patch", (1, 48, 48, 40), 3, TINY, device="cuda").traced_bytes >= columns
    assert small.predicted_bytes > large.predicted_bytes
    embedded = plan_variant("full", (1, 32, 32, 96), 3, ModelConfig(channels=(8, 16, 32, 64, 128)))
    assert embedded.traced_bytes > 16 * 27 * 32 * 32 * 96 * 4  # 162 MiB of columns, where the tensors are 16 MiB


@pytest.mark.parametrize("variant", ["patch", "cascade"])
def test_monotone_in_slab_size(variant):
    predicted = [
        plan_variant(variant, (1, 64, 64, 64), 3, ModelConfig(channels=(4, 8, 16), slab_size=s)).predicted_bytes
        for s in (4, 8, 16, 32)
    ]
    assert predicted == sorted(predicted) and predicted[0] < predicted[-1]


def traced_network_bytes(shape, classes, channels):
    """Structural live-set peak of one U-Net inference at ``shape`` (input and weights excluded)."""
    from medseg_mem.models.unet import UNet3D

    with torch.device("meta"):
        net = UNet3D(shape[1], classes, channels).eval()
    image = torch.zeros(shape, device="meta")
    with torch.inference_mode(), LiveSetTracer([image, *net.parameters(), *net.buffers()], all_inside=True) as tracer:
        net(image)
    return tracer.trace.inside_peak()


def test_follows_the_structure_not_a_table():
    shallow = traced_network_bytes((1, 1, 64, 64, 64), 2, (8, 16))
    deep = traced_network_bytes((1, 1, 64, 64, 64), 2, (8, 16, 32, 64))
    wide = traced_network_bytes((1, 1, 64, 64, 64), 2, (16, 32))
    wide_below = traced_network_bytes((1, 1, 64, 64, 64), 2, (8, 64))
    # the first level's decoder step is the peak of a lean pass: deeper levels only count when they are wide
    assert shallow <= deep < wide_below and 1.8 < wide / shallow < 2.1
    doubled = traced_network_bytes((1, 1, 64, 64, 128), 2, (8, 16))
    assert doubled == pytest.approx(2 * shallow, rel=0.01)


def test_training_needs_more_than_inference():
    inference = plan_variant("full", (1, 32, 32, 32), 3, TINY, device="cuda").predicted_bytes
    training = plan_variant("full", (1, 32, 32, 32), 3, TINY, ONE, device="cuda").predicted_bytes
    assert training > 1.5 * inference


def test_liver_like_full_is_infeasible_under_16gb():
    plans = {v: plan_variant(v, (1, 512, 512, 500), 3, budget_bytes=16 * GB) for v in ("full", "patch", "cascade")}
    assert not plans["full"].fits and plans["full"].predicted_bytes > 16 * GB
    assert plans["patch"].fits and plans["cascade"].fits


@pytest.mark.slow  # calibrates and measures in spawned processes: the planner end to end
def test_agrees_with_a_measured_small_run():
    channels = (8, 16, 32)
    shapes = [(1, 1, 32, 32, 32), (1, 1, 64, 64, 64), (1, 1, 96, 96, 96)]
    calibration = calibrate("cpu", shapes=shapes, channels=channels, channels_last=True)
    assert calibration.baseline_bytes > 100 * 2**20 and len(calibration.points) == 3
    shape = (1, 80, 80, 64)
    planned = plan_variant("full", shape, 2, ModelConfig(channels=channels), calibration=calibration)
    measured = measure_peak(full_setup, (shape, 2, channels), "cpu").peak_bytes
    assert abs(planned.predicted_bytes - measured) / measured < 0.25


def test_fit_and_cache(tmp_path):
    assert fit([(1, 3), (2, 5), (3, 7)]) == pytest.approx((2.0, 1.0))
    assert fit([(2, 6)]) == pytest.approx((3.0, 0.0))
    calibration = Calibration(1.2, 1000, "cpu|torch|4-8", ((1, 2),))
    path = save_calibration(tmp_path / "cal.json", calibration)
    assert load_calibration(path, "cpu|torch|4-8") == calibration
    assert load_calibration(path, "other") is None
    path.write_text("[1, 2]")
    with pytest.raises(OptionError, match=r"--calibration .*cal\.json: must hold a JSON object"):
        load_calibration(path, "cpu|torch|4-8")


def test_bad_arguments():
    with pytest.raises(OptionError, match="--shape must be"):
        plan_variant("full", (1, 64, 64), 3)
    with pytest.raises(OptionError, match="--classes must be"):
        plan_variant("full", (1, 64, 64, 64), 1)
    with pytest.raises(OptionError, match="--batch must be"):
        plan_variant("full", (1, 64, 64, 64), 3, batch=0)
    with pytest.raises(OptionError, match="--nproc must be"):
        plan_variant("full", (1, 64, 64, 64), 3, TINY, TRAIN, nproc=0)


@pytest.mark.parametrize(
    "text, expected", [("8GB", 8 * GB), ("512MiB", 512 * 2**20), ("1.5e9", 1_500_000_000), ("2048", 2048)]
)
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["lots", "-1GB", "0", "8 parsecs", ""])
def test_parse_bytes_rejects(text):
    with pytest.raises(OptionError, match="--budget must be"):
        parse_bytes(text)


def test_format_bytes():
    """Binary units whatever unit was typed: ``--budget 8GB`` prints as 7.45 GiB."""
    assert format_bytes(21.5 * 2**30) == "21.5 GiB" and format_bytes(512) == "512 B"
    assert format_bytes(parse_bytes("8GB")) == "7.45 GiB" and format_bytes(parse_bytes("512MiB")) == "512 MiB"
    assert format_bytes(1023) == "1023 B" and format_bytes(-45 * 10**6) == "-42.9 MiB"


# Training memory: the levers -----------------------------------------------------------------------------------

#: Training settings of the plans below: run's batch (oneDNN convolutions), no loader cache, contiguous weights.
TRAIN = TrainConfig(batch_size=2, cache_bytes=0, channels_last=False)
PLAN_OPTIONS = ("device", "calibration", "budget_bytes", "nproc", "cases")


def training_plan(shape=(2, 64, 64, 48), batch=2, **levers):
    """A tiny-width training plan of the full variant's step (no validation pass), without the loader's cache unless
    asked: ``levers`` are TrainConfig fields or plan options (:data:`PLAN_OPTIONS`)."""
    options = {name: levers.pop(name) for name in PLAN_OPTIONS if name in levers}
    train = dataclasses.replace(TRAIN, batch_size=batch, **levers)
    return plan_variant("full", shape, 3, TINY, train, validation=False, **options)


def step_bytes(plan):
    """The training step alone: the prediction without the loader's host memory."""
    return plan.predicted_bytes - (plan.host_bytes if plan.mode == "training" else 0)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_needs_less(precision):
    fp32, half = training_plan(), training_plan(precision=precision)
    assert half.precision == precision and half.resident_bytes >= fp32.resident_bytes  # master weights stay fp32
    assert half.traced_bytes < 0.75 * fp32.traced_bytes and half.predicted_bytes < fp32.predicted_bytes


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_checkpointing_needs_less(precision):
    plain, checkpointed = training_plan(precision=precision), training_plan(precision=precision, checkpointing=True)
    assert checkpointed.checkpointing and not plain.checkpointing
    assert checkpointed.traced_bytes < 0.8 * plain.traced_bytes


def test_bigger_batch_needs_more():
    one, two = training_plan(batch=2), training_plan(batch=4)
    assert step_bytes(two) > 1.5 * step_bytes(one) - one.resident_bytes and two.host_bytes == 2 * one.host_bytes


def test_host_bytes_follow_workers_and_cache():
    sample = 2 * 64 * 64 * 48 * 4 + 64 * 64 * 48  # float32 image + uint8 label
    hosts = [training_plan(workers=w, cache_bytes=c, batch=1).host_bytes
             for w, c in ((0, 0), (1, 0), (3, 0), (3, 10**9))]  # fmt: skip
    assert hosts == [sample, 2 * sample, 6 * sample, 6 * sample]  # full caches nothing: no cache bytes
    cascade = plan_variant("cascade", (2, 64, 64, 48), 3, TINY, dataclasses.replace(ONE, workers=3, cache_bytes=10**9),
                           validation=False)  # fmt: skip
    low = 19 * 19 * 14  # the cascade's stage-1 volume (downsample 0.3): stage 1 caches image and label, stage 2 label
    assert cascade.host_bytes - 6 * sample in (10**9 // (low * 9) * low * 9, 10**9 // low * low)
    few = plan_variant("cascade", (2, 64, 64, 48), 3, TINY, dataclasses.replace(ONE, cache_bytes=10**9), cases=3,
                       validation=False)  # fmt: skip
    assert few.host_bytes - sample in (3 * low * 9, 3 * low)  # three cases fill no more than three items
    assert loader_host_bytes((2, 64, 64, 48), batch=2, workers=0, cache_bytes=5) == 2 * sample + 5


def test_host_bytes_share_the_budget_on_cpu_only():
    cpu, cuda = (training_plan(workers=2, device=d) for d in ("cpu", "cuda"))
    assert cpu.host_bytes == cuda.host_bytes > 0
    assert cpu.predicted_bytes - cpu.host_bytes >= cuda.predicted_bytes  # (the CPU's backend buffers besides)
    budget = cuda.predicted_bytes + 1
    two_workers = dataclasses.replace(ONE, workers=2)
    assert plan_variant("full", (2, 64, 64, 48), 3, TINY, two_workers, device="cuda", budget_bytes=budget).fits
    assert not plan_variant("full", (2, 64, 64, 48), 3, TINY, two_workers, device="cpu", budget_bytes=budget).fits


def test_inference_plans_have_no_host_bytes():
    plan = plan_variant("full", (2, 64, 64, 48), 3, TINY)  # an inference has no loader
    assert plan.host_bytes == 0 and plan.precision == "fp32" and "host_bytes" in plan.to_dict()


def real_autocast_peak(shape, checkpointing):
    """Structural peak of a real bf16 CPU ``train_step`` (no optimizer), counted by the planner's tracer."""
    from medseg_mem.models.unet import UNet3D
    from medseg_mem.training.step import train_step

    class NoOptimizer:
        def zero_grad(self, set_to_none=True):
            pass

        def step(self):
            pass

    torch.manual_seed(0)
    net = UNet3D(shape[0], 3, TINY.channels, checkpointing=checkpointing).train()
    image, label = torch.randn((1, *shape)), torch.randint(0, 3, (1, 1, *shape[1:]), dtype=torch.uint8)
    from medseg_mem.memory.meta import backend_transient

    existing = [image, label, *net.parameters(), *net.buffers()]
    with LiveSetTracer(existing, all_inside=True, transient=backend_transient("cpu", False)) as tracer:
        train_step(net, NoOptimizer(), DiceCELoss(to_onehot_y=True, softmax=True, batch=True), image, label, "bf16")
    return tracer.trace.peak()


@pytest.mark.parametrize("checkpointing", [False, True])
def test_half_precision_trace_follows_cpu_autocast(checkpointing):
    """The meta emulation of autocast (half weights and activations, fp32 master gradients, CPU's fp32 max-pool,
    fp32 padded input) counts what real bf16 autocast allocates on CPU."""
    shape = (2, 48, 48, 40)
    half = training_plan(shape, precision="bf16", checkpointing=checkpointing, batch=1)
    fp32 = training_plan(shape, batch=1)
    planned = half.traced_bytes + half.resident_bytes - fp32.resident_bytes  # + autocast's weight copies
    assert planned == pytest.approx(real_autocast_peak(shape, checkpointing), rel=0.01)


@pytest.mark.slow  # calibrates and measures in spawned processes: the planner end to end
def test_training_agrees_with_a_measured_step():
    """A training calibration fitted on three cubes predicts another size's measured bf16+checkpointing step."""
    channels = (8, 16, 32)
    shapes = [(2, 1, 32, 32, 32), (2, 1, 48, 48, 48), (2, 1, 64, 64, 64)]
    calibration = calibrate("cpu", "training", "bf16", True, training_setup=training_setup, shapes=shapes,
                            channels=channels)  # fmt: skip
    assert calibration.key == calibration_key("cpu", "training", "bf16", True)
    assert calibration.key.endswith("|training-v4-bf16-checkpointing")
    shape = (2, 80, 64, 48)  # uncalibrated, the tiny network's step is 55 % above the structural count
    train = dataclasses.replace(ONE, precision="bf16", checkpointing=True, cache_bytes=0)
    planned = plan_variant("full", shape, 3, ModelConfig(channels=channels), train, calibration=calibration,
                           validation=False)  # fmt: skip
    measured = measure_peak(training_setup, ((1, *shape), 3, channels, "cpu", "bf16", True), "cpu", grad=True)
    assert abs(step_bytes(planned) - measured.peak_bytes) / measured.peak_bytes < 0.15


def test_bad_training_levers():
    with pytest.raises(OptionError, match="--precision must be one of fp32, bf16, fp16; got 'fp8'"):
        training_plan(precision="fp8")
    with pytest.raises(OptionError, match="--workers must be a whole number >= 0"):
        training_plan(workers=-1)
    with pytest.raises(OptionError, match="--cache must be a size >= 0"):
        training_plan(cache_bytes=-5)
    with pytest.raises(OptionError, match="--optimizer must be one of adam, sgd; got 'rmsprop'"):
        training_plan(optimizer="rmsprop")


def test_sgd_holds_one_weight_sized_state_less_than_adam():
    from medseg_mem.models.build import build_network

    weights = sum(p.numel() * 4 for p in build_network(2, 3, TINY).parameters())  # float32 parameters
    adam, sgd = training_plan(), training_plan(optimizer="sgd")
    assert adam.resident_bytes - sgd.resident_bytes == weights  # Adam: exp_avg, exp_avg_sq; SGD: momentum
    assert adam.traced_bytes == sgd.traced_bytes


@pytest.mark.parametrize("length,group", [(35, 1), (64, 1), (100, 2), (97, 3)])
def test_representative_slabs_trace_the_same_peak(length, group):
    """Running only the first two and the last slab group keeps the traced peak of the whole slab loop."""
    from medseg_mem.inference.slab import SlabInferer, representative_slabs

    net = torch.nn.Conv3d(2, 3, 3, padding=1, device="meta")
    image = torch.zeros(1, 2, 8, 8, length, device="meta")

    def peak(representative: bool) -> float:
        with torch.inference_mode(), LiveSetTracer([image, *net.parameters()], [net]) as tracer:
            if representative:
                with representative_slabs():
                    SlabInferer(slab_size=8, sw_batch_size=group)(image, net)
            else:
                SlabInferer(slab_size=8, sw_batch_size=group)(image, net)
        return tracer.trace.peak(multiplier=1.7)

    assert peak(True) == peak(False) > 0


def test_slab_count_does_not_slow_planning():
    """100,000 slices (6,250 slabs) plan (how long it takes is a benchmark's figure, not a test's); an absurd
    training batch is one OptionError, not overflow."""
    plans = [plan_variant(name, (1, 100000, 100000, 100000), 3, TINY) for name in ("patch", "cascade")]
    assert all(plan.predicted_bytes > 10**15 for plan in plans)
    with pytest.raises(OptionError, match=r"--shape with --batch 1000000 .* fits no device"):
        plan_variant("full", (1, 100000, 100000, 100000), 3, TINY, TrainConfig(batch_size=1000000))


def test_input_on_disk_drops_the_input_but_keeps_the_slab_read_back():
    """``predict`` spills ``patch``'s image to a file and reads one float32 slab per network call back from it."""
    shape = (2, 48, 40, 64)
    resident = plan_variant("patch", shape, 3, TINY).predicted_bytes
    on_disk = plan_variant("patch", shape, 3, TINY, input_on_disk=True).predicted_bytes
    assert resident - on_disk == 4 * 2 * 48 * 40 * (64 - TINY.slab_size)
    full = plan_variant("full", shape, 3, TINY)
    assert plan_variant("full", shape, 3, TINY, input_on_disk=True).predicted_bytes == full.predicted_bytes
