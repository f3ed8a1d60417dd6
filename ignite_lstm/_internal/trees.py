"""Nested mappings (configs as dicts) flattened to dotted keys, for comparing two of them key by key."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["flatten"]


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": 2}`` -> ``{"a.b": 1, "c": 2}``; a leaf (not a mapping) is kept whole.

    Args:
        tree: a nested mapping (lists are leaves).
        prefix: put before every key (used by the recursion).

    Returns:
        The leaves by their dotted keys.

    Example:
        >>> flatten({"train": {"lr": 0.005, "epochs": 100}, "seed": 0})
        {'train.lr': 0.005, 'train.epochs': 100, 'seed': 0}
    """
    if isinstance(tree, Mapping):
        flat: dict[str, Any] = {}
        for key, value in tree.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: tree}
