"""Streamed training samples: what a sample holds, that it repeats, and that the cache respects its budget."""

import numpy as np
import pytest
import torch

from medseg_mem.core.config import ModelConfig, TrainConfig
from medseg_mem.core.prepare_config import PrepareConfig
from medseg_mem.data import PreparedDataset
from medseg_mem.core.errors import OptionError
from medseg_mem.inference import cut_slab, slab_starts
from medseg_mem.data.cases import CaseStream
from medseg_mem.training.sampling import RandStageSampled, StageData, StageInputsd
from medseg_mem.variants import get_variant

MODEL = ModelConfig(channels=(2, 4), slab_size=8, downsample=0.5)


@pytest.fixture(scope="module")
def brats_like(tmp_path_factory):
    """A tiny prepared 4-channel, 4-class capacity task (6 cases of 24x24x20)."""
    from medseg_mem.data.prepare import prepare

    root = tmp_path_factory.mktemp("capacity")
    config = PrepareConfig(out_dir=root / "prepared", synthetic="brats-like", cases=6, shape=(24, 24, 20))
    prepare(config, progress=False)
    return PreparedDataset.open(root / "prepared")


def stage(variant, index=0):
    return get_variant(variant).stages()[index]


def data(dataset, variant, index=0, **train):
    config = TrainConfig(**{"batch_size": 2, "steps": 3, **train})
    return StageData(dataset, stage(variant, index), MODEL, config, stage_index=index)


def test_batches_have_the_stage_shapes_and_uint8_labels(brats_like):
    for variant, index, channels, depth in (("full", 0, 4, 20), ("patch", 0, 4, 8), ("cascade", 1, 4 + 3, 8)):
        batches = list(data(brats_like, variant, index).batches(0))
        assert len(batches) == 3
        x, y = batches[0]
        assert x.shape == (2, channels, 24, 24, depth) and x.dtype == torch.float32
        assert y.shape == (2, 1, 24, 24, depth) and y.dtype == torch.uint8
    x, y = next(data(brats_like, "cascade", 0).batches(0))
    assert x.shape == (2, 4, 12, 12, 10) and y.dtype == torch.uint8  # stage 1 at half resolution


def test_slab_sample_equals_the_whole_volume_inputs_cut_on_the_inference_grid(brats_like):
    guided = stage("cascade", 1)
    sampler = RandStageSampled(brats_like, guided, MODEL)
    case_id = brats_like.ids("train")[0]
    item = StageInputsd(brats_like, guided, MODEL)({"case": case_id})
    loaded = brats_like.load(case_id, mmap=False)
    image, label = torch.from_numpy(loaded.image)[None], torch.from_numpy(loaded.label)[None]
    whole_x, whole_y = guided.inputs(image, label, MODEL, brats_like.num_classes)
    seen = set()
    for seed in range(12):
        sampler.set_random_state(seed=seed)
        x, y = sampler(item)
        start = sampler._start
        seen.add(start)
        assert start in slab_starts(20, 8)
        assert torch.equal(y, cut_slab(whole_y, start, 8, axis=-1)[0].to(torch.uint8))
        assert torch.allclose(x, cut_slab(whole_x, start, 8, axis=-1)[0])  # guidance made for the slab only
    assert seen == {0, 8, 16}  # the last slab (16..19) is zero-padded, as at inference


def test_a_foreground_sample_draws_only_slabs_with_foreground(brats_like):
    patch = stage("patch")
    sampler = RandStageSampled(brats_like, patch, ModelConfig(channels=(2, 4), slab_size=4))
    for case_id in brats_like.ids("train"):
        for seed in range(5):
            sampler.set_random_state(seed=seed)
            _, y = sampler({"case": case_id}, foreground=True)
            assert y.max() > 0


def test_samples_do_not_depend_on_workers_or_on_resuming(brats_like):
    straight = list(data(brats_like, "cascade", 1, steps=4).batches(0))
    resumed = list(data(brats_like, "cascade", 1, steps=4).batches(2))
    with_workers = list(data(brats_like, "cascade", 1, steps=4, workers=2).batches(0))
    assert len(straight) == 4 and len(resumed) == 2
    for (x, y), (x2, y2) in zip(straight[2:], resumed):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    for (x, y), (x2, y2) in zip(straight, with_workers):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    other_seed = list(data(brats_like, "cascade", 1, steps=4, seed=1).batches(0))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(straight, other_seed))


def test_cache_holds_what_the_budget_allows(brats_like):
    low = data(brats_like, "cascade", 0)
    per_case = StageInputsd(brats_like, stage("cascade"), MODEL).cached_bytes((24, 24, 20))
    assert per_case == 12 * 12 * 10 * (4 * 4 + 1)
    n_train = len(brats_like.ids("train"))
    assert low.cache_count(brats_like.ids("train")) == n_train  # the default 1 GiB holds them all
    assert data(brats_like, "cascade", 0, cache_bytes=2 * per_case).cases().cache_num == 2
    assert data(brats_like, "cascade", 0, cache_bytes=0).cases().cache_num == 0
    uncached = list(data(brats_like, "cascade", 0, cache_bytes=0).batches(0))
    for (x, y), (x2, y2) in zip(uncached, low.batches(0)):
        assert torch.equal(x, x2) and torch.equal(y, y2)  # the cache changes memory, not the samples


def test_full_resolution_items_cache_only_the_case_id(brats_like):
    item = StageInputsd(brats_like, stage("patch"), MODEL)({"case": brats_like.ids("train")[0]})
    assert item == {"case": brats_like.ids("train")[0]}  # image and label are memory-mapped per sample


def test_case_stream_reads_one_case_per_index(brats_like):
    test = CaseStream(brats_like, "test")
    assert len(test) == len(brats_like.ids("test"))
    image, label = test[0]
    assert image.shape == (1, 4, 24, 24, 20) and label.dtype == torch.uint8
    assert not isinstance(image.numpy(), np.memmap)
    assert len(list(test)) == len(test)


def test_guidance_noise_changes_only_the_guidance_channels_and_repeats(brats_like):
    clean = list(data(brats_like, "cascade", 1, steps=6).batches(0))
    noisy = list(data(brats_like, "cascade", 1, steps=6, guidance_noise=1.0).batches(0))
    again = list(data(brats_like, "cascade", 1, steps=6, guidance_noise=1.0).batches(0))
    channels = brats_like.in_channels
    for (x, y), (xn, yn), (xa, ya) in zip(clean, noisy, again):
        assert torch.equal(y, yn) and torch.equal(x[:, :channels], xn[:, :channels])
        assert torch.equal(xn, xa) and torch.equal(yn, ya)
    assert any(not torch.equal(x, xn) for (x, _), (xn, _) in zip(clean, noisy))


def foreground_share(dataset, oversample, seed=0, steps=12):
    """Share of a patch stage's slab samples (slabs of 4 of 20 slices) that hold foreground."""
    model = ModelConfig(channels=(2, 4), slab_size=4)
    config = TrainConfig(batch_size=2, steps=steps, foreground_oversample=oversample, seed=seed)
    labels = torch.cat([y for _, y in StageData(dataset, stage("patch"), model, config).batches(0)])
    return (labels.flatten(1).amax(dim=1) > 0).float().mean().item()


def test_foreground_oversample_forces_that_share_of_slab_samples_to_hold_foreground(brats_like):
    none, half, every = (foreground_share(brats_like, p) for p in (0.0, 0.5, 1.0))
    assert every == 1.0 and none < 0.8  # the task has empty slabs: the check can fail
    assert none < half < every
    assert half == foreground_share(brats_like, 0.5)  # the choice is drawn from each sample's seed


def test_foreground_oversample_does_not_apply_to_whole_volumes(brats_like):
    plain = list(data(brats_like, "cascade", 0).batches(0))
    oversampled = list(data(brats_like, "cascade", 0, foreground_oversample=1.0).batches(0))
    for (x, y), (xo, yo) in zip(plain, oversampled):
        assert torch.equal(x, xo) and torch.equal(y, yo)


@pytest.mark.parametrize("value", [1.5, -0.1, True, "half"])
def test_foreground_oversample_must_be_a_fraction(value):
    with pytest.raises(OptionError, match="--foreground-oversample"):
        TrainConfig(foreground_oversample=value)
