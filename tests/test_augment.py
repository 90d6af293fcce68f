"""``--augment nnunet``: each training sample is augmented from its own seed, label-like channels move with the
label, shapes and dtypes stay; ``--augment none`` leaves the samples exactly as they were drawn before."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from medseg_mem.core.config import ModelConfig, TrainConfig
from medseg_mem.core.errors import OptionError
from medseg_mem.training.augment import SampleAugmentation
from medseg_mem.training.sampling import RandStageSampled, StageData
from medseg_mem.variants import get_variant

MODEL = ModelConfig(channels=(2, 4), slab_size=8, downsample=0.5)
SEEDS = range(40)


def stage_data(dataset, variant, index=0, **train):
    config = TrainConfig(**{"batch_size": 2, "steps": 4, **train})
    return StageData(dataset, get_variant(variant).stages()[index], MODEL, config, stage_index=index)


def pair(classes=3, size=(12, 14, 10), seed=0):
    generator = torch.Generator().manual_seed(seed)
    label = torch.randint(0, classes, (1, *size), generator=generator).to(torch.uint8)
    return torch.randn(1, *size, generator=generator), label


def onehot_guidance(label, classes):
    """What ``--guidance onehot`` makes of a label map: one channel per foreground class."""
    return F.one_hot(label[0].long(), classes).permute(3, 0, 1, 2)[1:].float()


def test_same_seed_same_sample_other_seed_other_sample():
    augment = SampleAugmentation("nnunet", slab=False, image_channels=1)
    x, y = pair()
    first, again = augment((x, y), seed=5), augment((x, y), seed=5)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    outputs = [augment((x, y), seed=seed)[0] for seed in SEEDS]
    assert len({out.numpy().tobytes() for out in outputs}) > len(SEEDS) // 2
    assert any(not torch.equal(out, x) for out in outputs)


@pytest.mark.parametrize("slab", [False, True])
def test_shapes_dtypes_and_label_values_are_kept(slab):
    augment = SampleAugmentation("nnunet", slab=slab, image_channels=2)
    x, y = torch.randn(2, 12, 14, 8), pair(classes=4, size=(12, 14, 8))[1]
    for seed in SEEDS:
        ax, ay = augment((x, y), seed=seed)
        assert ax.shape == x.shape and ax.dtype == torch.float32 and torch.isfinite(ax).all()
        assert ay.shape == y.shape and ay.dtype == torch.uint8
        assert set(ay.unique().tolist()) <= set(range(4))


def test_none_returns_the_pair_itself():
    x, y = pair()
    ax, ay = SampleAugmentation("none", slab=True, image_channels=1)((x, y), seed=3)
    assert ax is x and ay is y


def mixed_slices(augment, depth=6):
    """Seeds whose output mixes the label's slices (slice z holds class z + 1 inside, 0 at the border)."""
    y = torch.zeros(1, 16, 16, depth, dtype=torch.uint8)
    for z in range(depth):
        y[0, 3:13, 3:13, z] = z + 1
    x = y.float()
    mixed = []
    for seed in SEEDS:
        _, ay = augment((x, y), seed=seed)
        if any(len(set(ay[0, ..., z].unique().tolist()) - {0}) > 1 for z in range(depth)):
            mixed.append(seed)
    return mixed


def test_slab_stages_rotate_and_scale_in_plane_only():
    assert mixed_slices(SampleAugmentation("nnunet", slab=True, image_channels=1)) == []
    assert mixed_slices(SampleAugmentation("nnunet", slab=False, image_channels=1)) != []  # 3D rotation mixes


@pytest.mark.parametrize("slab", [False, True])
def test_guidance_channels_move_with_the_label_and_keep_their_values(slab):
    augment = SampleAugmentation("nnunet", slab=slab, image_channels=1, guided=True)
    image, y = pair(classes=3)
    x = torch.cat([image, onehot_guidance(y, 3)])
    moved = 0
    for seed in SEEDS:
        ax, ay = augment((x, y), seed=seed)
        assert torch.equal(ax[1:], onehot_guidance(ay, 3))  # nearest, no intensity change: still the label's
        moved += not torch.equal(ay, y)
    assert moved > len(SEEDS) // 2


def reference_samples(data, steps, foreground):
    """The samples as drawn before augmentation and oversampling existed: sample i's generator draws its case,
    then its sampler's seed; the slab is drawn among the foreground slabs or among all of them."""
    cases, batch = data.cases(), data.train.batch_size
    sampler = RandStageSampled(data.dataset, data.stage, data.model, data.train.guidance_noise)
    samples = []
    for index in range(steps * batch):
        rng = np.random.default_rng([data.train.seed, data.stage_index, index])
        item = cases[int(rng.integers(len(cases)))]
        sampler.set_random_state(seed=int(rng.integers(2**31)))
        samples.append(sampler(item, foreground=foreground))
    return samples


@pytest.mark.parametrize("variant,index,oversample", [("full", 0, 0.0), ("patch", 0, 0.0), ("patch", 0, 1.0),
                                                      ("cascade", 1, 1.0)])  # fmt: skip
def test_augment_none_draws_the_samples_of_before(tiny_prepared, variant, index, oversample):
    data = stage_data(tiny_prepared, variant, index, foreground_oversample=oversample, guidance_noise=0.5)
    batches = list(data.batches(0))
    expected = reference_samples(data, 4, foreground=oversample == 1.0)
    for step, (x, y) in enumerate(batches):
        for k in range(2):
            assert torch.equal(x[k], expected[2 * step + k][0]) and torch.equal(y[k], expected[2 * step + k][1])


@pytest.mark.parametrize("variant,index", [("full", 0), ("patch", 0), ("cascade", 0), ("cascade", 1)])
def test_augmented_batches_repeat_with_workers_and_resume_and_differ_from_plain(tiny_prepared, variant, index):
    plain = list(stage_data(tiny_prepared, variant, index).batches(0))
    straight = list(stage_data(tiny_prepared, variant, index, augment="nnunet").batches(0))
    resumed = list(stage_data(tiny_prepared, variant, index, augment="nnunet").batches(2))
    workers = list(stage_data(tiny_prepared, variant, index, augment="nnunet", workers=2).batches(0))
    for (x, y), (xs, ys) in zip(straight[2:], resumed):
        assert torch.equal(x, xs) and torch.equal(y, ys)
    for (x, y), (xw, yw) in zip(straight, workers):
        assert torch.equal(x, xw) and torch.equal(y, yw)
    for (x, y), (xp, yp) in zip(straight, plain):
        assert x.shape == xp.shape and y.shape == yp.shape and y.dtype == torch.uint8
        assert set(y.unique().tolist()) <= set(range(tiny_prepared.num_classes))
    assert any(not torch.equal(x, xp) for (x, _), (xp, _) in zip(straight, plain))
    samples = [sample for x, _ in straight for sample in x]
    assert len({sample.numpy().tobytes() for sample in samples}) == len(samples)  # each index its own draw


def test_unknown_augmentation_is_an_option_error():
    with pytest.raises(OptionError, match="--augment"):
        TrainConfig(augment="heavy")


def test_a_sample_does_not_depend_on_the_thread_count():
    """DataLoader workers run torch on one thread, the training process on several: the contrast's and gamma's
    means are sums whose last bits depend on the threads, so ``--workers`` must not change a sample."""
    augment = SampleAugmentation("nnunet", slab=False, image_channels=1)
    x, y = pair(size=(64, 64, 48))
    threads, outputs = torch.get_num_threads(), {}
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            outputs[count] = [augment((x, y), seed=seed) for seed in range(16)]
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(outputs[1], outputs[2]))
