"""Trainer and evaluator factories for stateful one-step-at-a-time models.

A batch is ``(x, y)``, ``(x, y, mask)``, ``(x, y, mask, reset)`` or a mapping with
those keys: x (B, T, F), y (B, T, O) floats or (B, T) class indices (with ``targets="last"``
one per sequence: (B, O) or (B,), ``ignite_lstm.engine.targets``), mask (B, T) bool, reset
(B,) bool: B sequences or lanes (``ignite_lstm.engine.batches``). The trainer's process function owns the recurrent
state: it starts every batch from a reset state (every sequence starts at n = 0) or,
with ``carry_state=True``, from the state the previous batch ended with, lane by lane,
fresh where the batch's ``reset`` says, at each epoch start and after ``reset_state``
(``ignite_lstm.engine.carry``: long series in consecutive chunks, a "stateful RNN"); it walks
time in windows of ``tbptt_steps`` steps, carries the state across windows and detaches
it at every window boundary, a batch's end included (``ignite_lstm.engine.updates``). Three
execution paths compute the same numbers, with the state carried or not:

- ``stepwise``: the literal loop, one ``model.step`` call per time step (reference);
- ``fused``: one ``model(x_window, state)`` call per window;
- ``fused-detached``: for ``tbptt_steps=1`` with ``update="sequence"`` and a model
  that advertises ``supports_detach_every_step`` (see ``ignite_lstm.models.lstm``), one
  ``model(x_chunk, state, detach_every_step=True)`` call per ``chunk_steps`` steps.

``execution="auto"`` takes the fastest exact path for the settings.

Masks: the model steps through every step, but a step whose mask is False counts
nowhere: the loss is the mean over the counted positions of the whole batch (on all
processes: their sum over their count), and so are its gradient, the reported loss
and each window's loss (NaN for a window without a counted step, which then has no
weight and, with ``update="window"``, no optimizer step); the evaluator's output
holds the counted positions only. ``collate_sequences`` (``collate_last``) pads
sequences of different lengths and builds it. Padding never matters: NaN at an
uncounted step gives the numbers of zeros there.

Loss contract (``ignite_lstm.engine.losses``): ``loss_fn(y_pred, y)`` receives the counted
positions flattened, y_pred (N, O) and y (N, O) or (N,) class indices, and returns the mean
over the N positions of a per-position value (every ``reduction="mean"`` elementwise loss
and ``nn.CrossEntropyLoss``/``nn.NLLLoss`` as given, their ``weight`` and ``ignore_index``
included; ``"sum"``/``"none"`` is refused). Every path takes any such loss. The per-step losses of
``fused-detached`` use the built-in losses' unreduced forms, else ``torch.func.vmap``
over the positions, else one call per step (said once in the log, with the cost).

Mixed precision (``amp_dtype``): autocast around each forward and loss, never around
the backward or the optimizer step; autocast already on around ``run`` is refused
(its cached low-precision weights would go stale across optimizer steps).
``StatefulLSTM`` stays float32 under autocast (see ``ignite_lstm.models.lstm``).

Gradient accumulation (N steps): N batches of B sequences give the step of one batch
of N*B when each counts the same number of positions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, cast

import ignite.distributed as idist
import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from ignite.metrics import Average

from ignite_lstm.engine.attributes import run_state
from ignite_lstm.engine.batches import check_prepared, prepare_batch
from ignite_lstm.engine.carry import CarryingEngine, check_carry_state, reset_state, set_state
from ignite_lstm.engine.evaluation import _to_device, create_evaluator
from ignite_lstm.engine.events import TimeEvents, count_windows, warn_windowless
from ignite_lstm.engine.execution import (
    check_amp_dtype,
    note_amp_ignored,
    refuse_outer_autocast,
    resolve_execution,
    select_execution,
)
from ignite_lstm.engine.losses import check_loss
from ignite_lstm.engine.targets import TruncationCheck, check_targets, prepare_targets
from ignite_lstm.engine.updates import BatchUpdate

__all__ = [
    "TimeEvents",
    "create_trainer",
    "create_evaluator",
    "select_execution",
    "epoch_loss_metric",
    "set_tbptt_steps",
    "reset_state",
    "set_state",
]  # select_execution: execution.py; reset/set_state: carry.py; create_evaluator: evaluation.py

logger = logging.getLogger(__name__)

UPDATES = ("sequence", "window")


def _check_positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"Argument {name} should be an integer, got {type(value).__name__}.")
    if value < 1:
        raise ValueError(f"Argument {name} should be positive, got {value}.")


def create_trainer(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable,
    *,
    tbptt_steps: int = 1,
    update: str = "sequence",
    grad_clip: float | None = None,
    device: str | torch.device | None = None,
    execution: str = "auto",
    chunk_steps: int | None = None,
    amp_dtype: torch.dtype | None = None,
    gradient_accumulation_steps: int = 1,
    non_blocking: bool = False,
    prepare_batch: Callable = prepare_batch,
    engine: str | None = None,
    carry_state: bool = False,
    targets: str = "step",
) -> Engine:
    """Create an Ignite trainer that steps a stateful model one time step per call.

    Batches, masks and the loss contract: see the module docstring. Every batch starts
    from a reset state, unless ``carry_state``.

    Args:
        model: any module with ``forward(x, state=None) -> (y, state)`` for x (B, T, F);
            ``step(x_t, state) -> (y_t, state)`` for x_t (B, F) is used when present.
            The state may be None, a tensor, a tuple or a dict of tensors.
        optimizer: the optimizer of ``model``'s parameters.
        loss_fn: the loss: the mean over (sequence, step) positions of a per-position value.
        tbptt_steps: window length K: the state is detached every K steps
            (1 is the literal L = 1 setting: no gradient through time).
        update: ``"sequence"`` (one optimizer step per batch, gradients summed over
            windows) or ``"window"`` (one optimizer step per window).
        grad_clip: max gradient norm before each optimizer step, or None.
        device: where batches go; the model is moved there too, in place (a move that
            would replace its parameters, and so leave the optimizer behind, is refused).
        execution: ``"auto"``, ``"fused"`` or ``"stepwise"``, see ``select_execution``.
        chunk_steps: steps per chunk of the ``fused-detached`` path (bounds memory), or None: sized for each
            batch by the model, as many steps as keep a chunk's saved arrays within its budget
            (``StatefulLSTM.detached_chunk_steps``; 250 for a model without that method,
            ``ignite_lstm.engine.updates.chunk_length``). The numbers do not depend on it beyond rounding.
        amp_dtype: None, ``torch.bfloat16`` or ``torch.float16``: autocast around each
            forward and loss only; float16 adds a ``GradScaler`` (``trainer.state.scaler``).
        gradient_accumulation_steps: N: Ignite's meaning: each batch's loss scaled by 1/N,
            an optimizer step at iterations N, 2N, ... (``update="sequence"`` only).
        non_blocking: passed to the batch transfer.
        prepare_batch: ``(batch, device, non_blocking) -> (x, y)``, ``(x, y, mask)`` or
            ``(x, y, mask, reset)``.
        engine: deprecated name of ``execution``.
        carry_state: keep the state across batches, lane by lane (``ignite_lstm.engine.carry``):
            fresh where a batch's ``reset`` (B,) bool is True, at each epoch start and after
            ``reset_state``; in ``trainer.state.carried_state`` and the ``state_dict``. The
            model needs ``state_batch_dim``. Without it every lane of every batch starts fresh.
        targets: ``"step"``: y (B, T, O) floats or (B, T) class indices, a target per step;
            ``"last"``: y (B, O) or (B,), one per sequence, compared with the output at its last
            counted step (``ignite_lstm.engine.targets``). Warns once when counted steps lie beyond
            the first window (a window shorter than the sequences truncates their gradient).

    Returns:
        An ``Engine`` (a ``CarryingEngine`` with ``carry_state``) whose output is ``{"loss":
        float, "grad_norm": float}`` (the loss of the global batch over all processes; without
        an optimizer step, the norm accumulated so far), with an ``epoch_loss`` metric
        (Ignite's ``Average`` of the iterations' losses), firing the ``TimeEvents``;
        ``trainer.state.execution`` names the path taken and ``trainer.state.tbptt_steps``
        the window length (``set_tbptt_steps`` changes it).

    Example:
        >>> model = StatefulLSTM(5, 32)
        >>> opt = torch.optim.Adam(model.parameters(), 1e-3)
        >>> trainer = create_trainer(model, opt, nn.MSELoss(), tbptt_steps=100)
        >>> @trainer.on(TimeEvents.WINDOW_COMPLETED(every=10))
        ... def log_window(engine):
        ...     print(engine.state.window, engine.state.window_loss.item())
    """
    _check_trainer_args(tbptt_steps, chunk_steps, gradient_accumulation_steps, update, grad_clip)
    check_carry_state(carry_state)
    check_targets(targets)
    check_loss(loss_fn)
    check_amp_dtype(amp_dtype)
    note_amp_ignored(model, amp_dtype)
    _to_device(model, device, optimizer=True)
    execution = resolve_execution(execution, engine)
    path = select_execution(model, loss_fn, tbptt_steps, update, execution)
    scaler = None
    if amp_dtype is torch.float16:
        scaler = torch.amp.GradScaler(next(model.parameters()).device.type)
    body = BatchUpdate(
        model,
        optimizer,
        loss_fn,
        TimeEvents,
        path=path,
        tbptt_steps=tbptt_steps,
        update=update,
        chunk_steps=chunk_steps,
        grad_clip=grad_clip,
        amp_dtype=amp_dtype,
        accumulation_steps=gradient_accumulation_steps,
        scaler=scaler,
        allow_empty=carry_state,
    )

    truncation = TruncationCheck(targets)

    def _update(engine: Engine, batch) -> dict[str, float]:
        x, y, mask, reset = check_prepared(prepare_batch(batch, device, non_blocking))
        refuse_outer_autocast(x)
        x, y, mask = prepare_targets(targets, x, y, mask)
        truncation(mask, body.tbptt_steps)
        model.train()
        out = body(engine, x, y, mask, cast(CarryingEngine, engine).begin_batch(x, reset) if carry_state else None)
        if carry_state:
            cast(CarryingEngine, engine).end_batch(out.state, out.padded)
        total = out.total
        if idist.get_world_size() > 1:
            # Every rank reports (and TerminateOnNan stops on) the same loss; the gradient
            # norm already is the same after DDP's averaging.
            total = cast(torch.Tensor, idist.all_reduce(total))
        norm = float("nan") if out.norm is None else float(out.norm)  # None: a carried chunk that counted nothing
        return {"loss": (total / out.count).item(), "grad_norm": norm}

    trainer = CarryingEngine(_update, model, checkpointed=True) if carry_state else Engine(_update)
    count_windows(trainer)
    run_state(trainer).window_loss = None
    run_state(trainer).window_losses = None
    run_state(trainer).execution = path
    run_state(trainer).tbptt_steps = tbptt_steps
    run_state(trainer).scaler = scaler
    extra: Any = trainer  # attributes Engine does not declare; set_tbptt_steps and epoch_loss_metric getattr them
    extra.execution = path  # deprecated alias of state.execution
    # kept on the trainer itself (no registry beside it): what set_tbptt_steps and epoch_loss_metric read
    extra._window_control = (body, lambda k: select_execution(model, loss_fn, k, update, execution))
    extra._epoch_loss = epoch_loss = Average(output_transform=lambda o: o["loss"])
    epoch_loss.attach(trainer, "epoch_loss")
    trainer.add_event_handler(Events.STARTED, lambda e: warn_windowless(e, e.state.execution))
    logger.debug("Trainer execution path: %s", path)
    return trainer


def set_tbptt_steps(trainer: Engine, tbptt_steps: int) -> str:
    """Change the window length K of a ``create_trainer`` trainer, from its next batch on.

    The path is chosen again for the new K with the trainer's ``execution`` request, as
    ``create_trainer`` chose it, so every batch runs an exact path; ``trainer.state.tbptt_steps``
    and ``trainer.state.execution`` say what runs. Call it between iterations.

    Args:
        trainer: an ``Engine`` from ``create_trainer``.
        tbptt_steps: the new window length K (>= 1).

    Returns:
        The execution path of the next batches.

    Example:
        >>> trainer = create_trainer(model, optimizer, nn.MSELoss(), tbptt_steps=1)  # fused-detached
        >>> trainer.add_event_handler(Events.EPOCH_STARTED(once=3), lambda e: set_tbptt_steps(e, 100))
    """
    _check_positive_int("tbptt_steps", tbptt_steps)
    control = getattr(trainer, "_window_control", None)
    if control is None:
        raise ValueError("Argument trainer should be an Engine made by create_trainer.")
    body, select = control
    path = select(tbptt_steps)
    body.set_window(path, tbptt_steps)
    extra: Any = trainer  # Engine does not declare execution (create_trainer's deprecated alias)
    run_state(trainer).tbptt_steps, run_state(trainer).execution, extra.execution = tbptt_steps, path, path
    warn_windowless(trainer, path)
    return path


def epoch_loss_metric(trainer: Engine) -> Average:
    """The ``epoch_loss`` metric ``create_trainer`` attached (its running sums go into checkpoints)."""
    metric = getattr(trainer, "_epoch_loss", None)
    if metric is None:
        raise ValueError("Argument trainer should be an Engine made by create_trainer.")
    return metric


def _check_trainer_args(
    tbptt_steps: int, chunk_steps: int | None, accumulation_steps: int, update: str, grad_clip: float | None
) -> None:
    _check_positive_int("tbptt_steps", tbptt_steps)
    if chunk_steps is not None:
        _check_positive_int("chunk_steps", chunk_steps)
    _check_positive_int("gradient_accumulation_steps", accumulation_steps)
    if update not in UPDATES:
        raise ValueError(f"Argument update should be one of {UPDATES}, got {update!r}.")
    if accumulation_steps > 1 and update != "sequence":
        raise ValueError(
            f"Argument gradient_accumulation_steps should be 1 with update='window' (an optimizer "
            f"step per window), got {accumulation_steps}."
        )
    if grad_clip is not None and (not isinstance(grad_clip, (int, float)) or isinstance(grad_clip, bool)):
        raise TypeError(f"Argument grad_clip should be a number or None, got {type(grad_clip).__name__}.")
    if grad_clip is not None and not grad_clip > 0:
        raise ValueError(f"Argument grad_clip should be positive or None, got {grad_clip}.")
