"""The settings a user gave, typed: what ``run``, ``plan`` and the bundles change in a dataset's profile.

Each field of :class:`ModelChanges` / :class:`TrainChanges` mirrors the :class:`~medseg_mem.core.config.ModelConfig`
/ :class:`~medseg_mem.core.config.TrainConfig` field of the same name; ``None`` means "not given: keep the
profile's value". :meth:`RunChanges.apply` lays them over a profile with :func:`dataclasses.replace`, so the
values are validated once, by the configs. No tuple of ``(name, value)`` pairs travels between the layers.

Example:
    >>> from medseg_mem.core.config import ModelConfig, TrainConfig
    >>> model, train = RunChanges(ModelChanges(slab_size=8)).apply(ModelConfig(), TrainConfig())
    >>> model.slab_size, train.steps
    (8, 300)
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Dict, Optional, Tuple


def given(changes) -> Dict[str, object]:
    """The fields of a changes dataclass that were given (not ``None``), by name."""
    values = {field.name: getattr(changes, field.name) for field in fields(changes)}
    return {name: value for name, value in values.items() if value is not None}


@dataclass(frozen=True)
class ModelChanges:
    """:class:`~medseg_mem.core.config.ModelConfig` fields the user set (``None``: the profile's)."""

    channels: Optional[Tuple[int, ...]] = None
    slab_size: Optional[int] = None
    downsample: Optional[float] = None
    guidance: Optional[str] = None
    deep_supervision: Optional[bool] = None


@dataclass(frozen=True)
class TrainChanges:
    """:class:`~medseg_mem.core.config.TrainConfig` fields the user set (``None``: the profile's)."""

    steps: Optional[int] = None
    batch_size: Optional[int] = None
    val_every: Optional[int] = None
    lr: Optional[float] = None
    lr_schedule: Optional[str] = None
    optimizer: Optional[str] = None
    loss: Optional[str] = None
    batch_dice: Optional[bool] = None
    class_weights: Optional[str] = None
    foreground_oversample: Optional[float] = None
    augment: Optional[str] = None
    guidance_noise: Optional[float] = None
    stage2_guidance: Optional[str] = None
    guidance_folds: Optional[int] = None
    seed: Optional[int] = None
    device: Optional[str] = None
    precision: Optional[str] = None
    checkpointing: Optional[bool] = None
    channels_last: Optional[bool] = None
    workers: Optional[int] = None
    cache_bytes: Optional[int] = None
    deterministic: Optional[bool] = None
    time_limit: Optional[float] = None
    snapshots: Optional[Tuple[float, ...]] = None


@dataclass(frozen=True)
class RunChanges:
    """What the user changed in the model and the training settings of a dataset's profile.

    Args:
        model: the network settings given.
        train: the training settings given.
    """

    model: ModelChanges = ModelChanges()
    train: TrainChanges = TrainChanges()

    @classmethod
    def of(cls, **values) -> "RunChanges":
        """Changes from keyword settings (``None``: not given), each sorted to its config by field name.

        Raises:
            TypeError: a name that is no ``ModelConfig`` or ``TrainConfig`` field.
        """
        model_names = {field.name for field in fields(ModelChanges)}
        model = {name: value for name, value in values.items() if name in model_names}
        train = {name: value for name, value in values.items() if name not in model_names}
        return cls(ModelChanges(**model), TrainChanges(**train))

    def given(self) -> Dict[str, object]:
        """Every setting given, by field name (empty: the profile as it is)."""
        return {**given(self.model), **given(self.train)}

    def apply(self, model: Any, train: Any) -> Tuple[Any, Any]:
        """``model`` (a ``ModelConfig``) and ``train`` (a ``TrainConfig``) with the given settings replaced
        (validated by the configs, whose module imports this one)."""
        return replace(model, **given(self.model)), replace(train, **given(self.train))
