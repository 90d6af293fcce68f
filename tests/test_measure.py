"""Peak-memory measurement: CPU readings in a spawned process grow with what the inference allocates."""

import pytest
import torch

from medseg_mem.core.errors import OptionError
from medseg_mem.memory import MeasurementError, MemoryReading, measure_peak


def allocate_setup(n_bytes):
    """Inference that fills a tensor of ``n_bytes`` (touched, so it is resident)."""

    def run():
        return torch.ones(n_bytes // 4, dtype=torch.float32)

    return run


def failing_setup(message):
    def run():
        raise ValueError(message)

    return run


def test_cpu_reading_grows_with_allocation():
    small = measure_peak(allocate_setup, (50_000_000,), "cpu")
    large = measure_peak(allocate_setup, (200_000_000,), "cpu")
    assert isinstance(small, MemoryReading) and small.device == "cpu"
    assert small.method == large.method and small.method.startswith('proc.')
    assert abs((large.peak_bytes - small.peak_bytes) - 150_000_000) <= 15_000_000
    assert 45_000_000 <= small.peak_bytes <= 70_000_000


def test_child_errors_surface_clearly():
    with pytest.raises(MeasurementError, match="ValueError: boom in the child"):
        measure_peak(failing_setup, ("boom in the child",), "cpu")


def test_bad_arguments():
    with pytest.raises(OptionError, match="device must be"):
        measure_peak(allocate_setup, (10,), "tpu")
    with pytest.raises(OptionError, match="setup must be a picklable"):
        measure_peak(lambda: (lambda: None), (), "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_reading():
    reading = measure_peak(cuda_setup, (100_000_000,), "cuda")
    assert reading.method == "cuda.max_memory_allocated"
    assert 100_000_000 <= reading.peak_bytes <= 110_000_000


def cuda_setup(n_bytes):
    def run():
        return torch.ones(n_bytes // 4, device="cuda")

    return run


def backward_setup(n_bytes):
    """A training-like step: ``n_bytes`` of weights, a temporary of the same size, then their gradient."""
    weights = torch.ones(n_bytes // 4, requires_grad=True)

    def run():
        (weights * 2).sum().backward()  # needs autograd: under inference mode there is no graph to go back through

    return run


def test_grad_measures_a_backward_pass():
    reading = measure_peak(backward_setup, (40_000_000,), "cpu", grad=True)
    # resident weights + the temporary (freed before the backward pass) or the gradient: ~80 MB
    assert 75_000_000 <= reading.peak_bytes <= 100_000_000
    with pytest.raises(MeasurementError, match="does not require grad"):
        measure_peak(backward_setup, (40_000_000,), "cpu")  # default: inference mode, as before


def test_grad_must_be_a_bool():
    with pytest.raises(OptionError, match="grad must be True"):
        measure_peak(allocate_setup, (10,), "cpu", grad="yes")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_grad_reading():
    reading = measure_peak(cuda_backward_setup, (100_000_000,), "cuda", grad=True)
    assert 200_000_000 <= reading.peak_bytes <= 220_000_000
    with pytest.raises(MeasurementError):
        measure_peak(cuda_backward_setup, (100_000_000,), "cuda")


def cuda_backward_setup(n_bytes):
    weights = torch.ones(n_bytes // 4, device="cuda", requires_grad=True)

    def run():
        (weights * 2).sum().backward()

    return run


def test_in_process_peak_counts_the_resident_bytes_and_what_the_block_adds():
    from medseg_mem.memory.measure import InProcessPeak

    with InProcessPeak("cpu", resident_bytes=1_000) as peak:
        block = bytearray(64 * 2**20)
        block[::4096] = b"x" * len(block[::4096])  # touch every page
    assert 1_000 + 60 * 2**20 < peak.peak_bytes < 1_000 + 200 * 2**20 and peak.method
