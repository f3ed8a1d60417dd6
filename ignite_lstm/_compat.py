"""The few places that rely on more than the documented API of torch or Ignite.

Each has a test in ``tests/test_compat.py`` that fails when the dependency changes
under it, so that an upgrade breaks loudly here instead of silently elsewhere.
"""

from __future__ import annotations

import logging

import torch

__all__ = ["tensor_version", "quiet_handler_logger"]


def tensor_version(t: torch.Tensor) -> int:
    """The tensor's in-place modification counter (``Tensor._version``).

    Every in-place op (an optimizer step, ``load_state_dict``'s copy) increments it;
    the native kernel's packed copies of the weights are valid while it is unchanged.
    torch has no public equivalent.
    """
    return t._version


def quiet_handler_logger(handler: object) -> None:
    """Remove the stream handler that some Ignite handlers add to their own ``logger``.

    ``TerminateOnNan`` logs through ``setup_logger``, which attaches a
    ``StreamHandler`` of its own: with the root logger's handler that prints each
    warning twice. The run's logging set-up shows it once.
    """
    log: logging.Logger = handler.logger  # type: ignore[attr-defined]
    for h in list(log.handlers):
        log.removeHandler(h)
