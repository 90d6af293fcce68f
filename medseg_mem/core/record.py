"""One way a settings dataclass becomes a JSON-ready dict and comes back: checkpoints, ``run.json`` and the
trained-run reader all use it (:class:`~medseg_mem.core.config.ModelConfig`, ``TrainConfig``,
:class:`~medseg_mem.core.inference_config.InferenceConfig`).

Example:
    >>> from medseg_mem.core.config import ModelConfig
    >>> ModelConfig(channels=(4, 8)).to_dict()["channels"]
    [4, 8]
    >>> ModelConfig.from_dict({"channels": [4, 8], "num_classes": 3}) == ModelConfig(channels=(4, 8))
    True
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Dict, Mapping


class Record:
    """``to_dict`` / ``from_dict`` for a frozen settings dataclass (mixed in: the subclass is the dataclass).

    Tuples are written as lists (what JSON keeps) and read back as tuples; a field missing from the record gets
    the dataclass default, unless :meth:`older` says what records written before the field meant.
    """

    def to_dict(self) -> Dict[str, Any]:
        """Every field by name, tuples as lists (JSON-ready)."""
        return {field.name: _plain(getattr(self, field.name)) for field in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], strict: bool = False):
        """The settings in ``data`` (validated by the dataclass): :meth:`older` records are read as they were meant.

        Args:
            data: a record written by :meth:`to_dict` (or by an older medseg-mem).
            strict: refuse keys that are no field (``run.json``'s sections hold the settings only); else they are
                left out (a checkpoint's ``model`` also holds the network's channels and classes).

        Raises:
            TypeError: with ``strict``, a key that is no field.
            OptionError: a value the dataclass refuses, naming its option.
        """
        names = {field.name for field in fields(cls)}
        values = cls.older(dict(data))
        if strict:
            unknown = sorted(set(values) - names)
            if unknown:
                raise TypeError(f"unknown setting(s) {', '.join(unknown)}")
        return cls(**{name: tuple(value) if isinstance(value, list) else value
                      for name, value in values.items() if name in names})  # fmt: skip

    @classmethod
    def older(cls, data: Dict[str, Any]) -> Dict[str, Any]:
        """``data`` with what records written before a field existed meant (here: nothing to add)."""
        return data


def _plain(value: Any) -> Any:
    """A tuple as a list; anything else as it is."""
    return list(value) if isinstance(value, tuple) else value
