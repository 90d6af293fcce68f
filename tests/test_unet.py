"""The spec U-Net: output shapes for odd sizes, structure, padding never resizes, exact activation checkpointing."""

import copy

import pytest
import torch
from monai.losses import DiceCELoss

from medseg_mem.models import unet
from medseg_mem.models.unet import SPEC_CHANNELS, UNet3D, pad_amounts


@pytest.mark.parametrize("size", [(9, 10, 11), (16, 16, 16), (1, 3, 17), (35, 50, 36)])
def test_output_matches_input_size_for_odd_sizes(size):
    net = UNet3D(2, 3, channels=(2, 4, 8)).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 2, *size))
    assert out.shape == (1, 3, *size)


def test_spec_structure():
    net = UNet3D(1, 3)
    assert net.channels == SPEC_CHANNELS == (32, 64, 128, 256, 512)
    assert net.divisor == 16
    convs = [m for m in net.encoders[0] if isinstance(m, torch.nn.Conv3d)]
    norms = [m for m in net.encoders[0] if isinstance(m, torch.nn.BatchNorm3d)]
    assert [c.kernel_size for c in convs] == [(3, 3, 3)] * 2 and all(c.padding == (1, 1, 1) for c in convs)
    assert all(n.momentum == 0.1 for n in norms)
    assert net.head.kernel_size == (1, 1, 1) and net.head.out_channels == 3
    assert len(net.ups) == 4 and all(isinstance(u, torch.nn.ConvTranspose3d) for u in net.ups)


def test_padding_amounts_pad_at_end_to_divisor():
    assert pad_amounts((9, 16, 17), 8) == (0, 7, 0, 0, 0, 7)


def test_padding_does_not_leak_into_cropped_region_shape():
    """The cropped output keeps the voxel grid: a shifted input gives a shifted answer away from borders."""
    torch.manual_seed(0)
    net = UNet3D(1, 1, channels=(2, 4)).eval()
    x = torch.randn(1, 1, 12, 12, 12)
    with torch.no_grad():
        full = net(x)
    assert full.shape == x.shape


@pytest.mark.parametrize("channels", [(4,), (0, 4), ()])
def test_bad_channels_are_refused(channels):
    with pytest.raises(ValueError, match="channels"):
        UNet3D(1, 2, channels=channels)


# Activation checkpointing ------------------------------------------------------------------------------------------

CKPT_WIDTHS = (4, 8, 16)


def twin_networks(seed=0):
    """The same random weights twice: plain and checkpointed, both in training mode."""
    torch.manual_seed(seed)
    plain = UNet3D(2, 3, channels=CKPT_WIDTHS).train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.checkpointing = True
    return plain, checkpointed


def one_step(net, x, y, precision):
    """Forward (under bf16 autocast when asked), Dice+CE loss on float32 logits, backward."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = net(x)
    loss = DiceCELoss(to_onehot_y=True, softmax=True)(out.float(), y)
    loss.backward()
    return out, loss


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_checkpointing_is_bit_identical(precision):
    """Output, loss, every gradient and the BatchNorm statistics (updated once, not twice) are equal."""
    plain, checkpointed = twin_networks()
    x, y = torch.randn(2, 2, 12, 13, 10), torch.randint(0, 3, (2, 1, 12, 13, 10))  # odd sizes: padded, cropped
    (out_a, loss_a), (out_b, loss_b) = one_step(plain, x, y, precision), one_step(checkpointed, x, y, precision)
    assert torch.equal(out_a, out_b) and torch.equal(loss_a, loss_b)
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        assert torch.equal(a.grad, b.grad), name
    for (name, a), b in zip(plain.named_buffers(), checkpointed.buffers()):
        assert torch.equal(a, b), name
    assert int(checkpointed.encoders[0][1].num_batches_tracked) == 1
    assert all(m.momentum == 0.1 for m in checkpointed.modules() if isinstance(m, torch.nn.BatchNorm3d))


def test_channels_last_layout_gives_the_same_step_to_rounding():
    """Channels-last weights change the layout, not the maths: output and gradients agree to float rounding,
    and checkpointing stays bit-identical within the channels-last layout."""
    from medseg_mem.models.build import channels_last_layout

    plain, _ = twin_networks()
    last = channels_last_layout(copy.deepcopy(plain))
    last_checkpointed = copy.deepcopy(last)
    last_checkpointed.checkpointing = True
    assert last.encoders[0][0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert not plain.encoders[0][0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    x, y = torch.randn(2, 2, 12, 13, 10), torch.randint(0, 3, (2, 1, 12, 13, 10))
    (out_a, loss_a), (out_b, loss_b) = one_step(plain, x, y, "fp32"), one_step(last, x, y, "fp32")
    out_c, loss_c = one_step(last_checkpointed, x, y, "fp32")
    torch.testing.assert_close(out_a, out_b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(plain.named_parameters(), last.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-5, msg=name)
    assert torch.equal(out_b, out_c) and torch.equal(loss_b, loss_c)
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(last.parameters(), last_checkpointed.parameters()))


def test_checkpointing_runs_each_level_only_when_training_with_grad(monkeypatch):
    calls = []
    real = unet.checkpoint
    monkeypatch.setattr(unet, "checkpoint", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    plain, checkpointed = twin_networks()
    x = torch.randn(1, 2, 8, 8, 8)
    checkpointed(x).sum().backward()
    assert len(calls) == 2 * len(CKPT_WIDTHS) - 1  # every encoder level and every decoder step
    plain(x).sum().backward()
    calls.clear()
    with torch.no_grad():
        assert torch.equal(plain(x), checkpointed(x))  # training mode without autograd: plain forward
    plain.eval(), checkpointed.eval()
    assert torch.equal(plain(x), checkpointed(x))
    assert calls == []
    for a, b in zip(plain.buffers(), checkpointed.buffers()):
        assert torch.equal(a, b)


def test_frozen_running_stats_restores_momentum_and_counter():
    block = unet.double_conv(1, 2)
    with unet.frozen_running_stats(block):
        block(torch.randn(2, 1, 4, 4, 4))
        assert block[1].momentum == 0.0
    assert block[1].momentum == 0.1 and int(block[1].num_batches_tracked) == 0
    assert torch.equal(block[1].running_mean, torch.zeros(2)) and torch.equal(block[1].running_var, torch.ones(2))


def traced_step_peak(checkpointing, device="meta"):
    """Peak live bytes of a training step's forward, loss and backward, counted by the planner's tracer."""
    from medseg_mem.memory.trace import LiveSetTracer

    torch.manual_seed(0)
    with torch.device(device):
        net = UNet3D(2, 3, channels=(8, 16, 32), checkpointing=checkpointing).train()
        x, y = torch.zeros(1, 2, 32, 32, 32), torch.zeros(1, 1, 32, 32, 32, dtype=torch.long)
    with LiveSetTracer([x, y, *net.parameters(), *net.buffers()], all_inside=True) as tracer:
        DiceCELoss(to_onehot_y=True, softmax=True)(net(x), y).backward()
    gradients = sum(p.numel() * p.element_size() for p in net.parameters())
    return tracer.trace.peak(), tracer.trace.inside[-1] - gradients


def test_checkpointing_lowers_the_traced_training_peak():
    plain, plain_left = traced_step_peak(False)
    checkpointed, checkpointed_left = traced_step_peak(True)
    assert checkpointed < 0.75 * plain
    assert plain_left <= 8 and checkpointed_left <= 8  # only the gradients (and the scalar loss) outlive the step


def test_meta_trace_of_the_recomputation_matches_a_real_run():
    """The tracer sees the backward-pass recomputation on ``meta`` exactly as on real CPU tensors."""
    assert traced_step_peak(True, "meta") == traced_step_peak(True, "cpu")
