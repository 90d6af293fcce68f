"""A package face whose names load their modules on first use, so that importing the package stays cheap (torch
and MONAI load only when a name that needs them is asked for): PEP 562's module ``__getattr__``.

Example:
    >>> getattr_ = lazy_attributes("medseg_mem.core", {"OptionError": "errors"})
    >>> getattr_("OptionError").__name__
    'OptionError'
"""

from __future__ import annotations

import importlib
from typing import Callable, Dict


def lazy_attributes(package: str, exports: Dict[str, str]) -> Callable[[str], object]:
    """The module ``__getattr__`` of ``package``: ``exports`` maps each public name to the submodule defining it.

    Raises (from the returned function):
        AttributeError: for a name ``exports`` does not list, as for any module.
    """

    def attribute(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    return attribute
