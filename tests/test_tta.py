"""Test-time mirroring (``--tta``): the mean softmax over every flip of the mirrored axes, inside each network call.

Analytic networks: a pointwise (1x1x1) network is mirror-equivariant, so mirroring must not change its labels; a
network with a position-dependent term is not, and must give the hand-computed mean of its flipped passes; a
network pointwise along the slab axis must give the same mirrored answer slab by slab as on the whole volume.
"""

import pytest
import torch
from click.testing import CliRunner

from medseg_mem.cli import main
from medseg_mem.core.config import InferenceConfig, ModelConfig
from medseg_mem.core.errors import OptionError
from medseg_mem.inference.mirror import flips, mirrored, unmirrored_note
from medseg_mem.variants import Stage, TrainedVariant, get_variant

K = 3
MODEL = ModelConfig(channels=(2, 4), slab_size=4, downsample=0.5)
TTA = InferenceConfig(tta=True)
WHOLE, SLABS = Stage("whole", slab=False, include_background=False), Stage("slabs", slab=True, include_background=True)


def pointwise(in_channels: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Conv3d(in_channels, K, kernel_size=1).eval()


class Ramped(torch.nn.Module):
    """A 1x1x1 convolution plus a ramp along X and Y (the slab's in-plane axes): not mirror-symmetric, and pointwise
    along Z, so a slab of it is the matching part of the whole volume's answer."""

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        self.conv = pointwise(in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp_x = torch.linspace(-2, 2, x.shape[2]).view(1, 1, -1, 1, 1)
        ramp_y = torch.linspace(0, 1, x.shape[3]).view(1, 1, 1, -1, 1)
        return self.conv(x) + torch.cat([ramp_x + 0 * ramp_y, -ramp_x + ramp_y, 0 * ramp_x + ramp_y], dim=1)


@pytest.mark.parametrize("name", ["full", "patch", "cascade"])
def test_a_mirror_equivariant_network_gives_the_same_labels_with_and_without_tta(name):
    variant = get_variant(name)
    nets = {s.name: pointwise(s.in_channels(1, K, MODEL), seed=i) for i, s in enumerate(variant.stages())}
    image = torch.randn(1, 1, 8, 10, 13)
    with torch.inference_mode():
        plain = TrainedVariant(variant, nets, MODEL, K).segment(image)
        run = TrainedVariant(variant, nets, MODEL, K, TTA)
        mirrored_labels, probabilities = run.segment(image), run.probabilities(image)
    assert torch.equal(plain, mirrored_labels)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(1, 8, 10, 13), atol=1e-5)


def test_tta_gives_the_mean_of_the_softmax_of_the_flipped_passes():
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, K, kernel_size=3, padding=1).eval()
    x = torch.randn(1, 1, 3, 4, 5)
    by_hand = sum(torch.softmax(net(x.flip(dims)), dim=1).flip(dims)
                  for dims in [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]) / 8  # fmt: skip
    two_axes = sum(torch.softmax(net(x.flip(dims)), dim=1).flip(dims) for dims in [(), (2,), (3,), (2, 3)]) / 4
    full = get_variant("full")
    with torch.inference_mode():
        assert torch.allclose(TrainedVariant(full, {"full": net}, MODEL, K, TTA).probabilities(x), by_hand, atol=1e-6)
        plain = TrainedVariant(full, {"full": net}, MODEL, K).probabilities(x)
        axes = InferenceConfig(tta=True, tta_axes=(0, 1))
        assert torch.allclose(TrainedVariant(full, {"full": net}, MODEL, K, axes).probabilities(x), two_axes, atol=1e-6)
        labels = TrainedVariant(full, {"full": net}, MODEL, K, TTA).segment(x)
    assert not torch.allclose(plain, by_hand, atol=1e-3)  # the network is not symmetric: mirroring matters
    assert torch.equal(labels.long(), by_hand.argmax(dim=1, keepdim=True))


def test_flips_are_every_subset_of_the_axes_once():
    assert flips((0, 1, 2)) == [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]
    assert flips((2,)) == [(), (4,)]


@pytest.mark.parametrize("overlap", [0.0, 0.5])
@pytest.mark.parametrize("depth", [12, 13])  # a multiple of the slab size, and one that pads the last slab
def test_a_slab_stage_mirrors_like_the_whole_volume_for_a_network_pointwise_along_the_slab_axis(overlap, depth):
    net, x = Ramped(), torch.randn(1, 1, 6, 5, depth)
    inference = InferenceConfig(tta=True, overlap=overlap)
    with torch.inference_mode():
        whole = WHOLE.forward(net, x, MODEL, inference)
        slabs = SLABS.forward(net, x, MODEL, inference)
        plain = WHOLE.forward(net, x, MODEL)
        labels = SLABS.labels(net, x, MODEL, inference=inference)
    torch.testing.assert_close(slabs, whole, rtol=0, atol=1e-5)
    assert torch.equal(labels.long(), whole.argmax(dim=1, keepdim=True))
    assert not torch.allclose(torch.softmax(plain, dim=1), torch.softmax(whole, dim=1), atol=1e-3)


def test_the_wrapper_keeps_the_networks_dtype_and_sums_probabilities():
    net = pointwise(1)
    x = torch.randn(2, 1, 4, 4, 4)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = mirrored(net, (0, 1, 2))(x)
    assert out.dtype == torch.bfloat16 and out.shape == (2, K, 4, 4, 4)
    assert torch.allclose(out.float().exp().sum(dim=1), torch.ones(2, 4, 4, 4), atol=2e-2)


@pytest.mark.parametrize("axes", [(3,), (0, 0), (), (-1,), ("x",), (True,)])
def test_tta_axes_outside_0_to_2_are_refused_naming_the_option(axes):
    with pytest.raises(OptionError, match="--tta-axes must list distinct spatial axes 0, 1 or 2"):
        InferenceConfig(tta=True, tta_axes=axes)


def test_describe_and_the_axes_of_a_config():
    assert InferenceConfig(tta=True).describe() == "fp32, tta 0-1-2"
    assert InferenceConfig(tta=True, tta_axes=(0, 1)).mirror_axes == (0, 1)
    assert InferenceConfig(tta_axes=(0, 1)).mirror_axes == () and InferenceConfig().describe() == "fp32"


def error_lines(result):
    return [line for line in result.output.splitlines() if line.startswith("Error")]


@pytest.mark.parametrize("command", ["run", "predict", "plan"])
@pytest.mark.parametrize(
    "args, message", [(["--tta", "--tta-axes", "0,3"], "must list distinct spatial axes 0, 1 or 2"),
                      (["--tta", "--tta-axes", "1,1"], "must list distinct spatial axes"),
                      (["--tta-axes", "0,1"], "--tta-axes 0,1 only applies with --tta; add --tta")],
)  # fmt: skip
def test_bad_tta_usage_is_a_one_line_error(tmp_path, command, args, message):
    required = {"predict": ["scan.nii.gz", "--checkpoint", "x", "--out", str(tmp_path)], "plan": ["--shape", "1,8,8,8",
                "--classes", "2"], "run": ["--data", str(tmp_path / "nowhere")]}[command]  # fmt: skip
    result = CliRunner().invoke(main, [command, *required, *args])
    assert result.exit_code == 2 and "Traceback" not in result.output
    (line,) = error_lines(result)
    assert message in line and "--tta-axes" in line


def test_plan_models_the_mirroring_buffer():
    from medseg_mem.memory.planner import plan_variant

    for name in ("full", "patch", "cascade"):
        plain = plan_variant(name, (1, 32, 32, 40), K, model=MODEL)
        mirrored_plan = plan_variant(name, (1, 32, 32, 40), K, model=MODEL, inference=TTA)
        assert mirrored_plan.tta == (0, 1, 2) and plain.tta == ()
        assert mirrored_plan.traced_bytes > plain.traced_bytes  # the probability sum and the flipped copies


def test_mirroring_a_network_trained_without_mirroring_is_noted_and_otherwise_silent():
    note = unmirrored_note("none", (0, 1, 2))
    assert note.startswith("note: --tta mirrors axes 0,1,2") and "--augment nnunet" in note
    assert unmirrored_note("nnunet", (0, 1, 2)) is None and unmirrored_note("none", ()) is None
