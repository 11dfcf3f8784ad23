"""Lazy package exports: a package names its public objects without importing heavy modules.

``rlrec.agents`` re-exports names from modules that import torch and Stable-Baselines3;
importing the package must stay cheap (the CLI's ``--help``, a data-only script). PEP 562's
module-level ``__getattr__`` and ``__dir__`` load a name's module on first access. This module
builds that pair once for every package instead of each package writing it again.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, names: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of a package with lazily imported exports.

    Args:
        package: The package's ``__name__`` (for the AttributeError message).
        names: Exported name -> the module that defines it.
        namespace: The package's ``globals()``: a loaded name is cached there, so the next
            access does not go through ``__getattr__``.
    """

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *names})

    return __getattr__, __dir__
