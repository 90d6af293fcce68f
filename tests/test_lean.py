"""The row-chunked inference pass (``models/lean.py``) and half convolution weights: the numbers of the autograd pass,
bit for bit, with about one first-level tensor alive instead of four."""

import copy

import pytest
import torch

from medseg_mem.core.precision import half_convolutions, with_precision
from medseg_mem.memory.trace import LiveSetTracer
from medseg_mem.models import lean
from medseg_mem.models.build import channels_last_layout
from medseg_mem.models.unet import UNet3D


def random_net(in_channels, classes, channels, seed=0):
    """A U-Net in eval mode with non-trivial BatchNorm statistics and affine parameters."""
    torch.manual_seed(seed)
    net = UNet3D(in_channels, classes, channels).eval()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.normal_()
            module.bias.data.normal_()
    return net


def chunks_of(monkeypatch, rows):
    """Make every chunked operation take ``rows`` slices at a time."""
    monkeypatch.setattr(lean, "chunk_rows", lambda like, channels: rows)


@pytest.mark.parametrize("rows", [1, 2, 3, 100])
@pytest.mark.parametrize("channels_last", [False, True])
def test_chunked_pass_equals_the_autograd_pass(monkeypatch, rows, channels_last):
    """Halo slices, uneven last chunks, write-back one chunk behind, the up-sampling of odd row ranges: same output."""
    chunks_of(monkeypatch, rows)
    net = random_net(2, 3, (4, 8, 16, 32))
    net = channels_last_layout(net) if channels_last else net
    x = torch.randn(2, 2, 20, 17, 16)
    with torch.enable_grad():
        reference = net(x).detach()
    with torch.inference_mode():
        assert torch.equal(net(x), reference)


@pytest.mark.parametrize("rows", [2, 3])
def test_chunked_bf16_pass_equals_autocast_with_float32_weights(monkeypatch, rows):
    """Half convolution weights under autocast compute what autocast computes from float32 weights."""
    chunks_of(monkeypatch, rows)
    net = channels_last_layout(random_net(1, 3, (4, 8, 16), seed=1))
    x = torch.randn(1, 1, 16, 12, 16)
    with torch.enable_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        reference = net(x).detach()  # CPU autocast: the max-pool upcasts to float32, the weights are cast per call
    half = half_convolutions(copy.deepcopy(net), "bf16")
    with torch.inference_mode():
        assert torch.equal(with_precision(half, "bf16")(x), reference)



def test_default_chunked_bf16_pass_pools_in_bf16_with_the_same_numbers():
    """Float32 weights, contiguous layout, the default chunks: the max-pool in bf16 gives autocast's numbers."""
    net = random_net(1, 3, (4, 8, 16), seed=1)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.enable_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        reference = net(x).detach()  # CPU autocast: the max-pool upcasts to float32
    with torch.inference_mode():
        assert torch.equal(with_precision(net, "bf16")(x), reference)

def test_half_convolutions_keeps_batchnorm_float32_and_fp32_untouched():
    net = UNet3D(1, 2, (4, 8))
    assert half_convolutions(net, "fp32").head.weight.dtype == torch.float32
    half_convolutions(net, "bf16")
    convs = [m for m in net.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert all(c.weight.dtype == c.bias.dtype == torch.bfloat16 for c in convs if c.bias is not None)
    assert all(n.weight.dtype == n.running_var.dtype == torch.float32 for n in norms)


def traced_peak(rows, monkeypatch) -> int:
    """Live bytes at the peak of one inference pass at 1x1x64x32x32, widths 8-16-32, ``rows`` slices per chunk."""
    chunks_of(monkeypatch, rows)
    with torch.device("meta"):
        net = UNet3D(1, 2, (8, 16, 32)).eval()
        x = torch.zeros(1, 1, 64, 32, 32)
    with LiveSetTracer([x, *net.parameters(), *net.buffers()], [net]) as tracer, torch.inference_mode():
        net(x)
    return tracer.trace.inside_peak()


def test_chunked_pass_keeps_about_one_first_level_tensor(monkeypatch):
    first_level = 8 * 64 * 32 * 32 * 4  # one float32 tensor of the first width
    whole = traced_peak(64, monkeypatch)  # one chunk: skip, up-sampled, concatenation and output alive together
    chunked = traced_peak(4, monkeypatch)
    assert whole >= 4 * first_level
    assert chunked < 1.8 * first_level and chunked < 0.4 * whole


def test_chunks_of_a_few_channel_input_use_the_whole_convolutions_kernel(monkeypatch):
    """PyTorch runs a small float32 CPU convolution (N * C * D * H <= 20480) with its slow fallback, whose numbers
    differ from oneDNN's in the last bit: a chunk of a convolution that is whole above the limit stays on oneDNN."""
    chunks_of(monkeypatch, 2)
    net = random_net(4, 2, (4, 8))
    x = torch.randn(1, 4, 40, 240, 8)  # whole: 1 * 4 * 40 * 240 = 38400; a 2-slice chunk with halo: 3840
    with torch.enable_grad():
        reference = net(x).detach()
    with torch.inference_mode():
        assert torch.equal(net(x), reference)


def test_default_chunks():
    """A 32nd of the first axis, but no chunk under 16 MiB."""
    assert lean.chunk_rows(torch.empty(1, 32, 240, 240, 160), 32) == 8  # ceil(240 / 32)
    assert lean.chunk_rows(torch.empty(1, 32, 240, 240, 16), 32) * 32 * 240 * 16 * 4 >= lean.CHUNK_BYTES


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_batchnorm_of_a_chunk_is_written_over_it_with_the_modules_numbers(dtype, channels_last):
    """On the CPU the chunk's BatchNorm needs no second chunk of memory, and gives what the module gives."""
    norm = random_net(1, 2, (8, 16)).encoders[0][1]
    chunk = torch.randn(2, 8, 3, 5, 6).to(dtype)
    if channels_last:
        chunk = chunk.contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        reference = norm(chunk)
        result = lean._normalise(norm, chunk)
    assert result.data_ptr() == chunk.data_ptr()
    assert result.dtype == reference.dtype and torch.equal(result, reference)


def test_batchnorm_in_training_mode_is_left_to_the_module():
    norm = random_net(1, 2, (8, 16)).encoders[0][1].train()
    chunk = torch.randn(2, 8, 3, 5, 6)
    with torch.no_grad():
        result = lean._normalise(norm, chunk)
    assert result.data_ptr() != chunk.data_ptr()
