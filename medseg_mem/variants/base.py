"""What a variant is: a list of training stages plus a recipe that segments a whole volume.

A :class:`Stage` is one U-Net to train: which input it sees (full or reduced resolution, guided or not),
whether it works on slabs, and whether its Dice loss includes the background. The trainer trains stages
and never asks which variant it serves; a new variant is one new module that subclasses :class:`Variant`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, List, Tuple

import torch
from torch import nn

from medseg_mem.core.config import InferenceConfig, ModelConfig
from medseg_mem.core.precision import with_precision
from medseg_mem.inference.labels import labels_of
from medseg_mem.inference.mirror import mirrored
from medseg_mem.inference.slab import SlabInferer
from medseg_mem.inference.source import SlabSource
from medseg_mem.variants.guided import LabelGuidedSlabs
from medseg_mem.variants.resample import guidance_channels, guidance_range, resample_image, resample_label, scaled_size


@dataclass(frozen=True)
class Stage:
    """One network of a variant.

    Args:
        name: unique within its variant; names the checkpoint folder.
        slab: trained on slabs cut along the last axis and inferred with :class:`SlabInferer`.
        include_background: whether the Dice loss counts the background channel (thesis: yes for slab stages,
            whose slabs may hold no foreground; no for whole-volume stages).
        scale: input resolution relative to the prepared volume (``None`` = the model's ``downsample``).
        guided: the input is the image concatenated with guidance derived from a label map.
    """

    name: str
    slab: bool
    include_background: bool
    scale: float | None = 1.0
    guided: bool = False

    def factor(self, model: ModelConfig) -> float:
        return model.downsample if self.scale is None else self.scale

    def cached_bytes(self, shape, model: ModelConfig, image_channels: int) -> int:
        """Bytes the training loader caches per case of spatial ``shape``: a downsampled stage its float32 image
        and uint8 label at its resolution, a guided stage the uint8 label at stage-1 resolution (its guidance is
        made per slab from it), a full-resolution stage nothing (it reads the memory-mapped case per sample)."""
        low = 1
        for side in scaled_size(shape, model.downsample):
            low *= int(side)
        if self.factor(model) != 1.0:
            return low * (4 * image_channels + 1)
        return low if self.guided else 0

    def in_channels(self, image_channels: int, num_classes: int, model: ModelConfig) -> int:
        extra = guidance_channels(model.guidance, num_classes) if self.guided else 0
        return image_channels + extra

    def inputs(
        self, image: torch.Tensor, label: torch.Tensor, model: ModelConfig, num_classes: int,
        low_label: torch.Tensor = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Whole-volume pair ``(x, y)`` of this stage from a batched image and ground-truth label (validation).

        Guided stages get ``low_label`` ``(B, 1, x, y, z)`` at stage-1 resolution (stage 1's prediction) or, when
        it is ``None``, the ground truth downsampled by ``model.downsample`` (the blur of a good stage-1 output),
        upsampled by :func:`~medseg_mem.variants.resample.guidance_range` as training samples are.
        """
        factor = self.factor(model)
        if factor != 1.0:
            size = scaled_size(image.shape[2:], factor)
            image, label = resample_image(image, size), resample_label(label, size, num_classes)
        if self.guided:
            low = self.low_label(label, model, num_classes) if low_label is None else low_label
            guide = guidance_range(low, label.shape[2:], 0, label.shape[-1], model.guidance, num_classes)
            image = torch.cat([image, guide], dim=1)
        return image, label

    def validation_input(
        self, image: torch.Tensor, label: torch.Tensor, model: ModelConfig, num_classes: int,
        low_label: torch.Tensor = None,
    ) -> Tuple[torch.Tensor | SlabSource, torch.Tensor]:  # fmt: skip
        """:meth:`inputs` as validation needs them: the same pair, except that a guided stage's input is a
        :class:`~medseg_mem.variants.guided.LabelGuidedSlabs` whose guidance is made slab by slab (for
        :meth:`labels`, which gives the same labels as on the whole concatenated volume)."""
        if not self.guided:
            return self.inputs(image, label, model, num_classes)
        low = self.low_label(label, model, num_classes) if low_label is None else low_label
        return LabelGuidedSlabs(image, low, model.guidance, num_classes), label

    @staticmethod
    def low_label(label: torch.Tensor, model: ModelConfig, num_classes: int) -> torch.Tensor:
        """The label at the cascade's stage-1 resolution, which a guided stage's training guidance comes from."""
        return resample_label(label, scaled_size(label.shape[2:], model.downsample), num_classes).to(torch.uint8)

    def forward(
        self, net: nn.Module, x: torch.Tensor, model: ModelConfig, inference: InferenceConfig = None
    ) -> torch.Tensor:
        """Logits of the whole (stage-resolution) volume ``x``, once (:meth:`StageInference.logits`; a caller that
        infers more than once builds the :class:`StageInference` once)."""
        return StageInference(self, net, model, inference).logits(x)

    def labels(
        self, net: nn.Module, x, model: ModelConfig, device: Any = None, inference: InferenceConfig = None
    ) -> torch.Tensor:
        """Label map of the whole volume ``x``, once (:meth:`StageInference.labels`)."""
        return StageInference(self, net, model, inference, device).labels(x)


class StageInference:
    """One stage's network as inference runs it, made once: at the inference's precision, mirrored when it asks
    for ``tta`` (inside every call, so a slab stage mirrors each slab and holds one slab's probabilities), and for
    a slab stage its two :class:`~medseg_mem.inference.slab.SlabInferer` (logits and labels).

    Args:
        stage: the stage.
        net: its network (a U-Net, a ``meta`` one for the planner, or an ONNX session called like one).
        model: the variant settings (slab size).
        inference: slab batch, overlap, precision and mirroring (default
            :class:`~medseg_mem.core.config.InferenceConfig`).
        device: where label maps are kept (default: where the network runs).

    Example:
        >>> run = StageInference(Stage("patch", slab=True, include_background=True), torch.nn.Conv3d(1, 2, 1),
        ...                      ModelConfig(slab_size=4))
        >>> run.labels(torch.zeros(1, 1, 4, 4, 10)).shape
        torch.Size([1, 1, 4, 4, 10])
    """

    def __init__(self, stage: Stage, net: nn.Module, model: ModelConfig, inference: InferenceConfig = None,
                 device: Any = None) -> None:  # fmt: skip
        inference = inference or InferenceConfig()
        self.stage, self.device = stage, device
        network = with_precision(net, inference.precision)
        self.network = mirrored(network, inference.mirror_axes) if inference.tta else network
        if stage.slab:
            settings = dict(slab_size=model.slab_size, sw_batch_size=inference.sw_batch_size, overlap=inference.overlap)
            self.logits_inferer = SlabInferer(**settings)
            self.labels_inferer = SlabInferer(**settings, output="labels", device=device)

    def logits(self, x: torch.Tensor | SlabSource) -> torch.Tensor:
        """Logits of the whole (stage-resolution) volume ``x``: slab-wise or in one pass (with ``tta`` the log of
        the mirrored mean probabilities, :func:`~medseg_mem.inference.mirror.mirrored`)."""
        return self.logits_inferer(x, self.network) if self.stage.slab else self.network(x)

    def labels(self, x: torch.Tensor | SlabSource) -> torch.Tensor:
        """Label map ``(B, 1, X, Y, Z)`` (uint8; int16 beyond 255 classes) of the whole volume ``x`` on the
        ``device`` given (default: where the network runs): slab by slab, or the argmax of one pass taken a few
        slices at a time. ``x`` may be a :class:`~medseg_mem.inference.source.SlabSource` for a slab stage."""
        if self.stage.slab:
            return self.labels_inferer(x, self.network)
        return labels_of(self.network(x), self.device)


class Variant:
    """Base class: subclasses set ``name`` and ``description``, implement :meth:`stages`, and override
    :meth:`segment` when they have more than one stage."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def stages(self) -> List[Stage]:
        raise NotImplementedError

    def reads_slabs_only(self) -> bool:
        """True when :meth:`segment` is this base recipe and its one stage is a slab stage on the full-resolution,
        unguided image: it reads the image only slab by slab, so the image may wait on disk
        (:class:`~medseg_mem.predict.files.SpilledImage`)."""
        stages = self.stages()
        if type(self).segment is not Variant.segment or len(stages) != 1:
            return False
        return stages[0].slab and stages[0].scale == 1.0 and not stages[0].guided

    def streams(self) -> bool:
        """True when the variant can segment a scan out of core (:meth:`stream`): no stage needs the
        full-resolution image whole (``patch`` and ``cascade``; never ``full``, one pass over the whole volume)."""
        return self.reads_slabs_only()

    def stream(self, run, stream, device: Any = None, probabilities: bool = False) -> Iterator[torch.Tensor]:
        """:meth:`segment` (or :meth:`probabilities`) of a scan that is never whole in memory: the outputs of
        consecutive chunks of :func:`chunk_depth` slices along the last axis, in order.

        Slabs never straddle two chunks, and each chunk's slab groups are the whole volume's, so the outputs are
        the whole volume's slices (``overlap`` 0 only: blended slabs would cross the chunks).

        Args:
            run: the :class:`~medseg_mem.variants.trained.TrainedVariant` (its stages' inference, model settings,
                number of classes and inference settings).
            stream: the preprocessed scan: ``shape`` ``(C, X, Y, Z)``, ``slabs(depth)`` yielding ``(start, (C, X, Y,
                n))`` in order, ``downsampled(size)`` (a :class:`~medseg_mem.data.streaming.preprocess.ScanStream`).
            device: where the networks run; chunks go there and outputs come back to the CPU (``None``: both
                stay where they are made: the planner's meta trace).
            probabilities: yield class probabilities ``(K, X, Y, n)`` instead of labels ``(1, X, Y, n)``.
        """
        (stage,) = self.stages()
        for _, chunk in stream.slabs(chunk_depth(run.model, run.inference)):
            x = chunk[None] if device is None else chunk[None].to(device)
            yield chunk_output(run.stages[stage.name], x, device, probabilities)

    def segment(self, run, image: torch.Tensor) -> torch.Tensor:
        """Label map ``(1, 1, X, Y, Z)`` (uint8; int16 beyond 255 classes) of a batched full-resolution image
        ``(1, C, X, Y, Z)``, made with ``run`` (a :class:`~medseg_mem.variants.trained.TrainedVariant`: one
        :class:`StageInference` per stage, the model settings and the number of classes); callers call
        ``run.segment(image)``.

        The labels are the argmax of :meth:`probabilities`, made without any full-size float tensor besides the
        input (and, for a whole-volume stage, the logits of its one pass). The default serves single-stage
        variants.
        """
        (stage,) = self.stages()
        return run.stages[stage.name].labels(image)

    def probabilities(self, run, image: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(1, K, X, Y, Z)`` of the same image: full-size K-channel floats, for callers
        that interpolate them (``predict`` on a resampled run). The default serves single-stage variants.
        """
        (stage,) = self.stages()
        return torch.softmax(run.stages[stage.name].logits(image).float(), dim=1)


def chunk_depth(model: ModelConfig, inference: InferenceConfig) -> int:
    """Slices an out-of-core chunk holds: one network call's slabs (``slab_size * sw_batch_size``)."""
    return int(model.slab_size) * int(inference.sw_batch_size)


def chunk_output(stage_run: StageInference, x, device: Any, probabilities: bool) -> torch.Tensor:
    """One chunk's labels ``(1, X, Y, n)`` (or probabilities ``(K, X, Y, n)``) of a slab stage's inference
    ``stage_run`` on batch ``x``, on the CPU when ``device`` is given."""
    if probabilities:
        out = torch.softmax(stage_run.logits(x).float(), dim=1)[0]
    else:
        out = stage_run.labels(x)[0]
    return out if device is None else out.cpu()
