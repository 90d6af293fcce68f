"""nnU-Net's data augmentation of training samples (``--augment nnunet``), as MONAI dictionary transforms.

Each training sample ``(x, y)`` is split into ``image`` (the scan's channels), ``label`` and, for the cascade's
guided stage 2, ``guidance`` (the channels made from the label): spatial transforms move all three together,
the image interpolated (trilinear) and the label and guidance nearest-neighbour, so their values stay what
they were (class indices, one-hot or index guidance); intensity transforms touch the image only. In nnU-Net's
order and with these parameters (probabilities per sample):

========================  =======================================================  =====
rotation                  ±15° around each axis; slab stages in-plane only          0.2
                          (around the slab axis), as nnU-Net's 2D augmentation of
                          anisotropic data
scaling                   zoom 0.85-1.25 (above 1 enlarges), one factor for all     0.2
                          axes; slab stages in-plane only (the slab axis keeps
                          its voxels)
Gaussian noise            std drawn from 0-0.1                                      0.1
brightness                multiplicative, 0.75-1.25                                 0.15
contrast                  0.75-1.25 around the mean, clipped to its range           0.15
gamma                     0.7-1.5 on the range-normalised image, mean/std kept      0.3
mirroring                 each spatial axis on its own                              0.5
========================  =======================================================  =====

Shapes do not change (rotation and scaling keep the size: zero padding, cropping), so a slab stays one slab of
the inference grid's thickness. Labels leave as uint8 and the image as float32. Every sample is augmented with
a generator seeded from that sample's own seed (:class:`~medseg_mem.training.sampling.StepSamples`), so a run
is repeatable with any ``--workers`` (augmentation runs on one torch thread wherever it runs,
:func:`one_thread`) and across ``--resume``.

Example:
    >>> augment = SampleAugmentation("nnunet", slab=True, image_channels=1)
    >>> x, y = augment((torch.randn(1, 8, 8, 4), torch.randint(0, 3, (1, 8, 8, 4), dtype=torch.uint8)), seed=3)
    >>> tuple(x.shape), x.dtype, y.dtype
    ((1, 8, 8, 4), torch.float32, torch.uint8)
"""

from __future__ import annotations

import contextlib
import math
from typing import List, Optional, Sequence, Tuple

import torch
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandFlipd,
    RandGaussianNoised,
    RandRotated,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    RandZoomd,
)

Pair = Tuple[torch.Tensor, torch.Tensor]

ROTATION = math.radians(15)
ZOOM = (0.85, 1.25)
SPATIAL_PROB = 0.2
NOISE_STD, NOISE_PROB = 0.1, 0.1
BRIGHTNESS, BRIGHTNESS_PROB = (-0.25, 0.25), 0.15  # factor 1 + f: 0.75-1.25
CONTRAST, CONTRAST_PROB = (-0.25, 0.25), 0.15
GAMMA, GAMMA_PROB = (0.7, 1.5), 0.3
MIRROR_PROB = 0.5


def spatial_transforms(keys: Sequence[str], slab: bool) -> List:
    """Random rotation and scaling of ``keys`` (the first is the image, the others are label-like)."""
    others = len(keys) - 1
    rotate_modes, zoom_modes = ["bilinear"] + ["nearest"] * others, ["trilinear"] + ["nearest-exact"] * others
    around = (0.0, 0.0, ROTATION) if slab else (ROTATION,) * 3
    zoom = ((ZOOM[0], 1.0), (ZOOM[1], 1.0)) if slab else ZOOM  # two factors: in-plane, slab axis
    return [
        RandRotated(keys, *around, prob=SPATIAL_PROB, keep_size=True, mode=rotate_modes, padding_mode="zeros"),
        RandZoomd(keys, prob=SPATIAL_PROB, min_zoom=zoom[0], max_zoom=zoom[1], mode=zoom_modes,
                  padding_mode="constant", keep_size=True),
    ]  # fmt: skip


def intensity_transforms() -> List:
    """Noise, brightness, contrast and gamma of the image (nnU-Net's order)."""
    return [
        RandGaussianNoised("image", prob=NOISE_PROB, std=NOISE_STD, sample_std=True),
        RandScaleIntensityd("image", factors=BRIGHTNESS, prob=BRIGHTNESS_PROB),
        RandScaleIntensityFixedMeand("image", factors=CONTRAST, fixed_mean=True, preserve_range=True,
                                     prob=CONTRAST_PROB),  # fmt: skip
        RandAdjustContrastd("image", prob=GAMMA_PROB, gamma=GAMMA, retain_stats=True),
    ]


def build_augmentation(name: str, slab: bool, guided: bool = False) -> Optional[Compose]:
    """The MONAI ``Compose`` of ``--augment name`` over ``image``, ``label`` (and ``guidance`` when ``guided``),
    or ``None`` for ``"none"``.

    Args:
        name: ``TrainConfig.augment``.
        slab: the stage trains on slabs: rotation and scaling stay in-plane.
        guided: samples carry guidance channels, moved with the label.
    """
    if name == "none":
        return None
    keys = ["image", "label"] + (["guidance"] if guided else [])
    mirrors = [RandFlipd(keys, prob=MIRROR_PROB, spatial_axis=axis) for axis in range(3)]
    return Compose(spatial_transforms(keys, slab) + intensity_transforms() + mirrors)


class SampleAugmentation:
    """Augment a training pair ``(x (C[+G], X, Y, Z) float32, y (1, X, Y, Z) uint8)`` from a seed.

    Args:
        name: ``TrainConfig.augment`` (``"none"`` returns pairs unchanged).
        slab: the stage trains on slabs.
        image_channels: the scan's channels C; channels of ``x`` beyond them are guidance.
        guided: ``x`` holds guidance channels after the image's.
    """

    def __init__(self, name: str, slab: bool, image_channels: int, guided: bool = False) -> None:
        self.transform = build_augmentation(name, slab, guided)
        self.image_channels, self.guided = image_channels, guided

    def __call__(self, pair: Pair, seed: int) -> Pair:
        """The augmented pair; the same ``seed`` gives the same augmentation."""
        if self.transform is None:
            return pair
        x, y = pair
        data = {"image": x[: self.image_channels], "label": y}
        if self.guided:
            data["guidance"] = x[self.image_channels :]
        with one_thread():
            out = self.transform.set_random_state(seed=seed)(data)
        parts = [plain(out["image"])] + ([plain(out["guidance"])] if self.guided else [])
        return torch.cat(parts).float(), plain(out["label"]).round().to(y.dtype)


@contextlib.contextmanager
def one_thread():
    """Run torch on one thread inside, as in a DataLoader worker: the contrast's and gamma's means and standard
    deviations are sums, whose last bits depend on how many threads share them, so a sample augmented in the
    training process (``--workers 0``) would otherwise differ from the same sample augmented in a worker."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def plain(tensor) -> torch.Tensor:
    """A MONAI ``MetaTensor`` as a plain tensor (the collated batch carries no metadata)."""
    return tensor.as_tensor() if hasattr(tensor, "as_tensor") else torch.as_tensor(tensor)
