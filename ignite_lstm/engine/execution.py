"""How a model is called: the execution paths, and a DDP wrapper looked through.

``select_execution`` resolves the user's choice (``auto``, ``fused``, ``stepwise``)
to the path ``create_trainer`` runs; ``step_fn`` and ``run_steps`` are the literal
L = 1 call and loop that the ``stepwise`` paths of trainer and evaluator share.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
import weakref
from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn as nn

__all__ = [
    "EXECUTIONS",
    "AMP_MODES",
    "select_execution",
    "execution_path",
    "resolve_execution",
    "step_fn",
    "run_steps",
    "unwrap",
    "without_grad_sync",
    "amp_context",
    "check_amp_dtype",
    "note_amp_ignored",
    "refuse_outer_autocast",
]

_AMP_NOTED: weakref.WeakSet = weakref.WeakSet()  # the models whose float32 under amp_dtype the log has said

EXECUTIONS = ("auto", "fused", "stepwise")

AMP_MODES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}
"""Config name (``train.amp``, null for none) -> the ``amp_dtype`` of the engines."""


def check_amp_dtype(amp_dtype: Any) -> None:
    """Refuse an ``amp_dtype`` other than None, ``torch.bfloat16`` or ``torch.float16``."""
    if amp_dtype is not None and amp_dtype not in AMP_MODES.values():
        raise ValueError(f"Argument amp_dtype should be None, torch.bfloat16 or torch.float16, got {amp_dtype!r}.")


def note_amp_ignored(model: nn.Module, amp_dtype: torch.dtype | None) -> None:
    """Say once per model in the log when ``amp_dtype`` leaves it in float32 (``computes_in_float32_under_autocast``).

    Its trainer and evaluators all take the setting: the first one says it.
    """
    net = unwrap(model)
    if amp_dtype is not None and getattr(net, "computes_in_float32_under_autocast", False) and net not in _AMP_NOTED:
        _AMP_NOTED.add(net)
        logging.getLogger("ignite_lstm.engine").warning(
            "amp_dtype=%s: %s computes in float32 under autocast (its recurrence has no %s form that "
            "the execution paths agree on), so the setting changes only the loss; leave amp_dtype=None "
            "for the same numbers without autocast's overhead.",
            amp_dtype,
            type(net).__name__,
            str(amp_dtype).replace("torch.", ""),
        )


def amp_context(x: torch.Tensor, amp_dtype: torch.dtype | None):
    """``torch.autocast`` on x's device type in ``amp_dtype``, or nothing for None.

    The engines enter it around each forward and loss only: leaving it after every
    forward drops autocast's cached low-precision copies of the weights, which would
    go stale across optimizer steps inside one long autocast region.
    """
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(x.device.type, dtype=amp_dtype)


def refuse_outer_autocast(x: torch.Tensor) -> None:
    """Raise when autocast is already on around the engine: the engines' own ``amp_dtype`` is the way."""
    if torch.is_autocast_enabled(x.device.type):
        raise RuntimeError(
            f"torch.autocast is active around the engine ({x.device.type}): its cached low-precision weights go "
            f"stale across optimizer steps. Remove it and pass amp_dtype=torch.bfloat16 (or torch.float16) to "
            f"create_trainer/create_evaluator instead."
        )


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside a DistributedDataParallel/DataParallel wrapper."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def without_grad_sync(model: nn.Module, last: bool):
    """Accumulate gradients locally until the last backward of an optimizer step (DDP only)."""
    if isinstance(model, nn.parallel.DistributedDataParallel) and not last:
        return model.no_sync()
    return contextlib.nullcontext()


def step_fn(model: nn.Module) -> Callable:
    """The L = 1 call: ``model.step`` when the model has one and is not wrapped.

    A DDP-wrapped model is called through its forward (length-1 sequence) so that
    its gradient hooks see the call.
    """
    if model is unwrap(model) and callable(getattr(model, "step", None)):
        return cast(Callable, model.step)

    def step(x_t, state):
        y, state = model(x_t.unsqueeze(1), state)
        return y.squeeze(1), state

    return step


def resolve_execution(execution: str, engine: str | None = None) -> str:
    """Check the ``execution`` argument; ``engine`` is its deprecated name."""
    if engine is not None:  # the argument's name before 0.2
        warnings.warn("Argument engine is deprecated; use execution=.", DeprecationWarning, stacklevel=3)
        execution = engine
    if execution not in EXECUTIONS:
        raise ValueError(f"Argument execution should be one of {EXECUTIONS}, got {execution!r}.")
    return execution


def select_execution(
    model: nn.Module,
    loss_fn: Callable,
    tbptt_steps: int,
    update: str,
    execution: str = "auto",
    *,
    engine: str | None = None,
) -> str:
    """Resolve the execution path: ``"stepwise"``, ``"fused"`` or ``"fused-detached"``.

    ``fused-detached`` applies to a model that advertises ``supports_detach_every_step``
    (``StatefulLSTM`` does) with ``tbptt_steps=1`` and ``update="sequence"``, for any
    loss that follows the contract of ``create_trainer``; ``auto`` takes it there, ``fused`` windows for
    ``tbptt_steps > 1`` and the per-step loop otherwise (``update="window"`` with
    ``tbptt_steps=1`` is an optimizer step per time step: inherently sequential).

    Args:
        model: the model (a DDP wrapper is looked through).
        loss_fn: the loss (every path takes any loss that follows the contract).
        tbptt_steps: the window length K.
        update: ``"sequence"`` or ``"window"``.
        execution: the user's choice, ``"auto"``, ``"fused"`` or ``"stepwise"``.
        engine: deprecated name of ``execution``.

    Returns:
        The path name that ``create_trainer`` will run.

    Example:
        >>> select_execution(StatefulLSTM(5, 32), nn.MSELoss(), tbptt_steps=1, update="sequence")
        'fused-detached'
        >>> select_execution(my_gru_model, nn.MSELoss(), tbptt_steps=1, update="sequence")
        'stepwise'
    """
    execution = resolve_execution(execution, engine)
    detaches = getattr(unwrap(model), "supports_detach_every_step", False) is True
    return execution_path(tbptt_steps, update, execution, detaches)


def execution_path(tbptt_steps: int, update: str, execution: str, detaches: bool) -> str:
    """The rule of ``select_execution`` on plain values (its one owner; the application's preflight reads it).

    Args:
        tbptt_steps: the window length K.
        update: ``"sequence"`` or ``"window"``.
        execution: ``"auto"``, ``"fused"`` or ``"stepwise"``.
        detaches: the model advertises ``supports_detach_every_step`` (``StatefulLSTM`` does).

    Returns:
        ``"stepwise"``, ``"fused"`` or ``"fused-detached"``.
    """
    if execution == "stepwise":
        return "stepwise"
    if detaches and tbptt_steps == 1 and update == "sequence":
        return "fused-detached"
    if execution == "fused" or tbptt_steps > 1:
        return "fused"
    return "stepwise"


def run_steps(step: Callable, x: torch.Tensor, state) -> tuple[torch.Tensor, Any]:
    """The literal loop: one L = 1 call per time step. x (B, T, F) -> y (B, T, O)."""
    outputs = []
    for t in range(x.shape[1]):
        y_t, state = step(x[:, t], state)
        outputs.append(y_t)
    return torch.stack(outputs, dim=1), state
