"""Helpers for recurrent state of any nesting: a tensor (GRU), a tuple (LSTM), a dict, or None."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["map_state", "detach_state", "state_tensors"]


def map_state(fn: Callable[..., torch.Tensor], state: Any, *others: Any) -> Any:
    """Apply ``fn`` to every tensor in a nested state, keeping its structure.

    Tuples (named tuples included), lists and dicts are rebuilt; ``None`` and
    non-tensor leaves are returned unchanged. With ``others`` (states of the same
    structure), ``fn`` takes the tensor of ``state`` and those at the same place in each.
    """
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return fn(state, *others)
    if isinstance(state, dict):
        return type(state)((k, map_state(fn, v, *(o[k] for o in others))) for k, v in state.items())
    if isinstance(state, (tuple, list)):
        parts = [map_state(fn, v, *(o[i] for o in others)) for i, v in enumerate(state)]
        return type(state)(*parts) if hasattr(state, "_fields") else type(state)(parts)  # a named tuple
    return state


def detach_state(state: Any) -> Any:
    """Cut the autograd graph at a truncated-BPTT window boundary; values are kept."""
    return map_state(torch.Tensor.detach, state)


def state_tensors(state: Any) -> list[torch.Tensor]:
    """The tensors of a nested state, in the order ``map_state`` visits them."""
    found: list[torch.Tensor] = []
    map_state(found.append, state)
    return found
