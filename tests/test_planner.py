"""Planner: structural live-set tracing, calibration, and predictions that follow the network's structure."""

import pytest
import torch

from medseg_mem.config import ModelConfig
from medseg_mem.errors import OptionError
from medseg_mem.memory.calibration import (
    Calibration,
    calibrate,
    fit,
    load_calibration,
    save_calibration,
    traced_network_bytes,
)
from medseg_mem.memory.measure import measure_peak
from medseg_mem.memory.planner import plan_variant
from medseg_mem.memory.trace import LiveSetTracer
from medseg_mem.memory.units import format_bytes, parse_bytes

TINY = ModelConfig(channels=(4, 8, 16))
GB = 10**9


def full_setup(shape, classes, channels):
    """Measured counterpart of ``plan_variant("full", ...)``: the full variant's segment on a random image."""
    from medseg_mem.models.unet import UNet3D
    from medseg_mem.variants import get_variant

    torch.manual_seed(0)
    model, variant = ModelConfig(channels=channels), get_variant("full")
    nets = {"full": UNet3D(shape[0], classes, channels).eval()}
    image = torch.randn((1, *shape))
    return lambda: variant.segment(nets, image, model, classes)


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
    sizes = [(1, 32, 32, 32), (1, 48, 48, 40), (1, 64, 64, 64)]
    predicted = [plan_variant(variant, s, 3, TINY).predicted_bytes for s in sizes]
    assert predicted == sorted(predicted) and predicted[0] < predicted[-1]


@pytest.mark.parametrize("variant", ["patch", "cascade"])
def test_monotone_in_slab_size(variant):
    predicted = [
        plan_variant(variant, (1, 64, 64, 64), 3, ModelConfig(channels=(4, 8, 16), slab_size=s)).predicted_bytes
        for s in (4, 8, 16, 32)
    ]
    assert predicted == sorted(predicted) and predicted[0] < predicted[-1]


def test_follows_the_structure_not_a_table():
    shallow = traced_network_bytes((1, 1, 64, 64, 64), 2, (8, 16))
    deep = traced_network_bytes((1, 1, 64, 64, 64), 2, (8, 16, 32, 64))
    wide = traced_network_bytes((1, 1, 64, 64, 64), 2, (16, 32))
    assert shallow < deep and 1.8 < wide / shallow < 2.1
    doubled = traced_network_bytes((1, 1, 64, 64, 128), 2, (8, 16))
    assert doubled == pytest.approx(2 * shallow, rel=0.01)


def test_training_needs_more_than_inference():
    inference = plan_variant("full", (1, 32, 32, 32), 3, TINY).predicted_bytes
    training = plan_variant("full", (1, 32, 32, 32), 3, TINY, mode="training").predicted_bytes
    assert training > 1.5 * inference


def test_liver_like_full_is_infeasible_under_64gb():
    plans = {v: plan_variant(v, (1, 512, 512, 500), 3, budget_bytes=64 * GB) for v in ("full", "patch", "cascade")}
    assert not plans["full"].fits and plans["full"].predicted_bytes > 64 * GB
    assert plans["patch"].fits and plans["cascade"].fits


def test_agrees_with_a_measured_small_run():
    channels = (8, 16, 32)
    calibration = calibrate(channels, "cpu", shapes=[(1, 1, 64, 64, 64), (1, 1, 96, 96, 96)])
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
    with pytest.raises(OptionError, match="--calibration must be"):
        load_calibration(path, "cpu|torch|4-8")


def test_bad_arguments():
    with pytest.raises(OptionError, match="--shape must be"):
        plan_variant("full", (1, 64, 64), 3)
    with pytest.raises(OptionError, match="--classes must be"):
        plan_variant("full", (1, 64, 64, 64), 1)
    with pytest.raises(OptionError, match="--mode must be"):
        plan_variant("full", (1, 64, 64, 64), 3, mode="serving")


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
    assert format_bytes(21.5e9) == "21.5 GB" and format_bytes(512) == "512 B"
