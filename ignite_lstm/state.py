"""Helpers for recurrent state of any nesting: a tensor (GRU), a tuple (LSTM), a dict, or None."""

from __future__ import annotations

from typing import Any, Callable

import torch

__all__ = ["map_state", "detach_state"]


def map_state(fn: Callable[[torch.Tensor], torch.Tensor], state: Any) -> Any:
    """Apply ``fn`` to every tensor in a nested state, keeping its structure.

    Tuples (named tuples included), lists and dicts are rebuilt; ``None`` and
    non-tensor leaves are returned unchanged.
    """
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return fn(state)
    if isinstance(state, dict):
        return type(state)((k, map_state(fn, v)) for k, v in state.items())
    if isinstance(state, tuple) and hasattr(state, "_fields"):  # named tuple
        return type(state)(*(map_state(fn, v) for v in state))
    if isinstance(state, (tuple, list)):
        return type(state)(map_state(fn, v) for v in state)
    return state


def detach_state(state: Any) -> Any:
    """Cut the autograd graph at a truncated-BPTT window boundary; values are kept."""
    return map_state(torch.Tensor.detach, state)
