"""Training samples streamed from a prepared dataset: memory-mapped cases, a bounded cache, a DataLoader.

No split is ever held in memory. A case is a pair of memory-mapped arrays
(:meth:`~medseg_mem.data.prepared.PreparedDataset.load`), opened per sample and dropped with it, so a slab sample
reads one slab's worth of data and nothing stays resident afterwards. What costs compute per case is cached by a
MONAI :class:`~monai.data.CacheDataset`, up to ``TrainConfig.cache_bytes`` (whatever does not fit is recomputed per
sample): the cascade's stage 1 caches its downsampled volume, stage 2 the low-resolution label its guidance is made
from (the ground truth downsampled, or stage 1's prediction read from the run's ``guidance`` folder with
``--stage2-guidance predicted``, :mod:`~medseg_mem.runner.out_of_fold`). Stage 2's guidance is then made per
sample, for the sample's slab only (:func:`~medseg_mem.variants.resample.guidance_range`). Labels stay uint8 until the
loss.

Sample ``i`` of a stage draws its case, its slab, whether that slab must hold foreground
(``--foreground-oversample``) and its augmentation (``--augment``) from ``numpy.random.default_rng([seed, stage,
i])``: a run gives the same samples (and the same guidance noise, ``--guidance-noise``) with any number of
``--workers``, and a resumed run continues with exactly the samples an uninterrupted run would have drawn. Slabs
are cut on the slab inferer's grid (starts 0, s, 2s, ..., the last slab zero-padded), so training sees exactly
the inputs inference will see (before augmentation, :mod:`~medseg_mem.training.augment`).

Example:
    >>> data = StageData(PreparedDataset.open(Path("medseg-work/prepared")), stage, model, train)  # doctest: +SKIP
    >>> for x, y in data.batches(first_step=0):  # (B, C, X, Y, 16) float32, (B, 1, X, Y, 16) uint8  # doctest: +SKIP
    ...     ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from monai.data import CacheDataset, DataLoader
from monai.transforms import MapTransform, Randomizable, Transform
from torch.nn import functional as F

from medseg_mem.core.config import ModelConfig, TrainConfig
from medseg_mem.data.cases import as_tensor, open_case
from medseg_mem.data.prepared import PreparedDataset
from medseg_mem.inference.slab import cut_slab, slab_starts
from medseg_mem.inference.source import SlabSource
from medseg_mem.training import distributed
from medseg_mem.training.augment import SampleAugmentation
from medseg_mem.training.guidance_files import load_guidance
from medseg_mem.training.guidance_noise import perturb_label
from medseg_mem.variants.base import Stage
from medseg_mem.variants.resample import guidance_range

Pair = Tuple[torch.Tensor, torch.Tensor]


class StageInputsd(Transform):
    """Deterministic per-case inputs of a stage (what the cache holds): ``{"case": id}`` -> the same dict plus

    * ``image``/``label`` at the stage's resolution for a downsampled stage (cascade stage 1),
    * ``low_label`` (the label at stage-1 resolution, uint8) for a guided stage (cascade stage 2),
    * nothing for full-resolution stages: they read the memory-mapped case per sample.
    """

    def __init__(self, dataset: PreparedDataset, stage: Stage, model: ModelConfig, guidance: Path = None) -> None:
        self.dataset, self.stage, self.model, self.guidance = dataset, stage, model, guidance

    def __call__(self, data: Dict) -> Dict:
        if self.stage.factor(self.model) != 1.0:
            image, label = open_case(self.dataset, data["case"])
            x, y = self.stage.inputs(as_tensor(image)[None], as_tensor(label)[None], self.model, self.num_classes)
            return {**data, "image": x[0], "label": y[0].to(torch.uint8)}
        if self.stage.guided:
            return {**data, "low_label": low_label_of(self.dataset, data["case"], self.stage, self.model,
                                                      self.guidance)[0]}  # fmt: skip
        return dict(data)

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    def cached_bytes(self, shape: Sequence[int]) -> int:
        """Bytes one cached item of a case of spatial ``shape`` holds (0 when only its id is cached)."""
        return self.stage.cached_bytes(shape, self.model, self.dataset.in_channels)


def low_label_of(dataset: PreparedDataset, case_id: str, stage: Stage, model: ModelConfig,
                 guidance: Optional[Path] = None) -> torch.Tensor:  # fmt: skip
    """A guided stage's label map at stage-1 resolution ``(1, 1, x, y, z)`` uint8: stage 1's prediction from the
    ``guidance`` folder (:mod:`~medseg_mem.runner.out_of_fold`), or the ground truth downsampled when ``None``."""
    if guidance is not None:
        return load_guidance(guidance, case_id)[None]
    label = as_tensor(open_case(dataset, case_id)[1])[None]
    return stage.low_label(label, model, dataset.num_classes)


class RandStageSampled(Randomizable, MapTransform):
    """One training sample ``(x, y)`` of a stage from a cached item: the whole volume, or (slab stages) one
    random slab on the inference grid, with the stage's guidance channels made for that slab only.

    Args:
        dataset: the prepared dataset the memory-mapped cases are read from.
        stage: the stage being trained.
        model: slab size, guidance encoding and downsampling.
        guidance_noise: chance per foreground class of a random perturbation of a guided stage's guidance
            (:func:`~medseg_mem.training.guidance_noise.perturb_label`).
    """

    def __init__(self, dataset: PreparedDataset, stage: Stage, model: ModelConfig,
                 guidance_noise: float = 0.0) -> None:  # fmt: skip
        MapTransform.__init__(self, keys=("image", "label"))
        self.dataset, self.stage, self.model = dataset, stage, model
        self.guidance_noise = guidance_noise
        self._start = 0

    def randomize(self, starts: Sequence[int]) -> None:
        self._start = int(starts[self.R.randint(len(starts))])

    def __call__(self, data: Dict, foreground: bool = False) -> Pair:
        """The sample of ``data``; ``foreground``: a slab stage draws among the slabs that hold foreground (all
        slabs when none does); whole-volume stages ignore it."""
        image, label = (data["image"], data["label"]) if "image" in data else open_case(self.dataset, data["case"])
        depth = self.model.slab_size if self.stage.slab else label.shape[-1]
        if self.stage.slab:
            self.randomize(self.candidates(label, foreground))
        else:
            self._start = 0
        x, y = slab_of(image, self._start, depth), slab_of(label, self._start, depth)
        if self.stage.guided:
            x = torch.cat([x, self.guidance(data["low_label"], label.shape[1:], depth)], dim=0)
        return x.float(), y

    def candidates(self, label: np.ndarray, foreground: bool) -> List[int]:
        """Grid starts to draw from: those whose slab holds foreground when ``foreground``, else all."""
        starts = slab_starts(label.shape[-1], self.model.slab_size)
        if not foreground:
            return starts
        present = np.asarray(label).reshape(-1, label.shape[-1]).max(axis=0) > 0
        return [s for s in starts if present[s : s + self.model.slab_size].any()] or starts

    def guidance(self, low_label: torch.Tensor, size: Sequence[int], depth: int) -> torch.Tensor:
        """Guidance channels of the current slab, zero past the volume's end (as the padded image)."""
        stop = min(self._start + depth, size[-1])
        if self.guidance_noise > 0:
            low_label = perturb_label(low_label, self.dataset.num_classes, self.guidance_noise, self.R)
        guide = guidance_range(low_label[None], size, self._start, stop, self.model.guidance, self.dataset.num_classes)
        return cut_slab(guide[0], 0, depth, axis=-1)


def slab_of(array, start: int, depth: int) -> torch.Tensor:
    """``depth`` voxels of ``array`` along its last axis from ``start``, as a tensor, zero-padded past the end as
    :func:`~medseg_mem.inference.slab.cut_slab` pads the last slab (only the slab is read from a memory map)."""
    return cut_slab(as_tensor(array[..., start : start + depth]), 0, depth, axis=-1)


def pad_to(tensor: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Zero-pad the spatial axes (the last three) of ``tensor`` at their end up to ``size``."""
    pad: List[int] = []
    for have, want in zip(reversed(tensor.shape[-3:]), reversed(tuple(size))):
        pad += [0, want - have]
    return F.pad(tensor, pad) if any(pad) else tensor


def collate(pairs: Sequence[Pair]) -> Pair:
    """Stack pairs of different spatial sizes by zero-padding to the largest (label 0 = background)."""
    size = [max(p[0].shape[axis] for p in pairs) for axis in (-3, -2, -1)]
    xs = torch.stack([pad_to(x, size) for x, _ in pairs])
    ys = torch.stack([pad_to(y, size) for _, y in pairs])
    return xs, ys


class StepSamples(torch.utils.data.Dataset):
    """Samples ``first .. total - 1`` of a stage's run; sample ``i`` is a pure function of ``(seed, stage, i)``.

    Under torchrun (``world`` processes, per-rank batch ``batch``) step ``s`` of the run is the global batch of
    samples ``s * batch * world .. (s + 1) * batch * world - 1``, and rank ``rank`` takes the ``batch`` of them
    from ``s * batch * world + rank * batch`` on: the ranks' shares are disjoint, together they are the batch a
    single process with ``--batch-size batch * world`` would draw, and a resumed run continues with them.
    With ``world == 1`` the ``k``-th item is sample ``first + k``, as always.

    Sample ``i``'s generator draws, in this order, its case, the sampler's seed (slab, guidance noise), whether it
    must hold foreground and its augmentation's seed: the draws added later come last, so the samples of a run
    without oversampling or augmentation are exactly those drawn before those options existed.

    Args:
        cases: the cached per-case items (a MONAI dataset over the train split).
        sampler: turns a cached item into a sample.
        seed: the run's seed; ``stage_index`` tells the stages of a variant apart.
        first: index of the first sample (``first_step * batch_size`` when resuming).
        total: index past the last sample (``steps * batch_size``).
        batch: the per-rank batch size (only used when ``world > 1``).
        rank: this process's rank; ``world``: how many processes train together.
        foreground: the fraction of samples that must hold foreground (``TrainConfig.foreground_oversample``;
            slab stages only).
        augment: augments each sample from its own seed (``None``: no augmentation).
    """

    def __init__(self, cases, sampler: RandStageSampled, seed: int, stage_index: int, first: int, total: int,
                 batch: int = 1, rank: int = 0, world: int = 1, foreground: float = 0.0,
                 augment: SampleAugmentation = None):  # fmt: skip
        self.cases, self.sampler = cases, sampler
        self.seed, self.stage_index, self.first, self.total = seed, stage_index, first, total
        self.batch, self.rank, self.world = batch, rank, world
        self.foreground, self.augment = foreground, augment

    def __len__(self) -> int:
        return max(0, self.total - self.first)

    def sample_index(self, index: int) -> int:
        """The run's sample index of this rank's item ``index``."""
        if self.world == 1:
            return self.first + index
        step, within = divmod(self.first + index, self.batch)
        return (step * self.world + self.rank) * self.batch + within

    def __getitem__(self, index: int) -> Pair:
        rng = np.random.default_rng([self.seed, self.stage_index, self.sample_index(index)])
        item = self.cases[int(rng.integers(len(self.cases)))]
        self.sampler.set_random_state(seed=int(rng.integers(2**31)))
        foreground, augment_seed = bool(rng.random() < self.foreground), int(rng.integers(2**31))
        pair = self.sampler(item, foreground=foreground)
        return pair if self.augment is None else self.augment(pair, augment_seed)


class StageData:
    """What one stage trains and validates on, streamed from a prepared dataset.

    Args:
        dataset: the prepared dataset.
        stage: the stage.
        model: the variant settings.
        train: batch size, workers, cache budget, seed, foreground oversampling and augmentation.
        stage_index: the stage's position in its variant (so two stages draw different samples).
        guidance: a guided stage's stage-1 predictions (``<case>.npy`` label maps at stage-1 resolution, for the
            train and val cases; :mod:`~medseg_mem.runner.out_of_fold`); ``None``: guidance from the ground truth.
    """

    def __init__(self, dataset, stage: Stage, model: ModelConfig, train: TrainConfig, stage_index: int = 0,
                 guidance: Optional[Path] = None) -> None:
        self.dataset, self.stage, self.model, self.train = dataset, stage, model, train
        self.stage_index, self.guidance = stage_index, guidance
        self._cases = None

    def cache_count(self, ids: Sequence[str]) -> int:
        """How many cases' items fit ``cache_bytes`` (sized by the largest case; all when items are ids only)."""
        per_case = self.inputs().cached_bytes(max((self.dataset.shape(i) for i in ids), key=np.prod))
        return len(ids) if per_case == 0 else min(len(ids), self.train.cache_bytes // per_case)

    def inputs(self) -> StageInputsd:
        return StageInputsd(self.dataset, self.stage, self.model, self.guidance)

    def cases(self) -> CacheDataset:
        """The train split as a MONAI ``CacheDataset`` of per-case stage inputs, cached up to the budget."""
        if self._cases is None:
            ids = self.dataset.ids("train")
            items = [{"case": case_id} for case_id in ids]
            self._cases = CacheDataset(
                items, self.inputs(), cache_num=self.cache_count(ids), num_workers=0,
                progress=False,  # MONAI's "Loading dataset" bar would nest inside the run's own training bar
                copy_cache=False,
            )  # fmt: skip
        return self._cases

    def batches(self, first_step: int) -> Iterator[Pair]:
        """Training batches for steps ``first_step .. steps - 1`` through a DataLoader with ``workers`` (this
        rank's share of each step's samples under torchrun, see :class:`StepSamples`)."""
        batch, train = self.train.batch_size, self.train
        sampler = RandStageSampled(self.dataset, self.stage, self.model, train.guidance_noise)
        samples = StepSamples(self.cases(), sampler, train.seed, self.stage_index, first_step * batch,
                              train.steps * batch, batch, distributed.rank(), distributed.world_size(),
                              train.foreground_oversample, self.augmentation())  # fmt: skip
        workers = self.train.workers
        return iter(DataLoader(samples, batch_size=batch, shuffle=False, num_workers=workers, collate_fn=collate,
                               persistent_workers=False, prefetch_factor=2 if workers else None))  # fmt: skip

    def augmentation(self) -> Optional[SampleAugmentation]:
        """What augments this stage's training samples (``None`` with ``--augment none``)."""
        if self.train.augment == "none":
            return None
        return SampleAugmentation(self.train.augment, self.stage.slab, self.dataset.in_channels, self.stage.guided)

    def validation_ids(self) -> List[str]:
        """The val split's case ids, in order."""
        return self.dataset.ids("val")

    def validation_pair(self, case_id: str, device=None) -> Tuple[torch.Tensor | SlabSource, torch.Tensor]:
        """One val case as ``(x, y)`` on ``device``: the stage's whole-volume input (a guided stage's as a
        :class:`~medseg_mem.inference.source.SlabSource` made slab by slab) and the uint8 label on the CPU.
        Made per case, so validation holds one case at a time however large the val split."""
        image, label = open_case(self.dataset, case_id)
        low = load_guidance(self.guidance, case_id)[None].to(device) if self.guidance else None  # None: from the label
        return self.stage.validation_input(as_tensor(image)[None].to(device), as_tensor(label)[None], self.model,
                                           self.dataset.num_classes, low)  # fmt: skip
