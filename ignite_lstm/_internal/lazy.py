"""Names of a package loaded on first use, so that importing one module of it loads no other."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_getattr"]


def lazy_getattr(
    package: str, exports: dict[str, str], fallback: Callable[[str, str], Any] | None = None
) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``exports[name]`` (a submodule of ``package``) when asked.

    Args:
        package: the package's dotted name.
        exports: name -> submodule (relative to ``package``) that defines it.
        fallback: ``fallback(package, name)`` for other names (the old layout's moved names).
    """

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        if fallback is not None:
            return fallback(package, name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
