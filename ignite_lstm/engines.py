"""Trainer and evaluator factories for stateful one-step-at-a-time models.

A batch is ``(x, y)`` with x (B, T, F) and y (B, T, O): B whole sequences. The
trainer's process function owns the recurrent state: it resets it at the start of
every batch (every sequence starts at n = 0), walks time in windows of
``tbptt_steps`` steps, carries the state across windows and detaches it at every
window boundary. Three execution paths compute the same numbers:

- ``stepwise``: the literal loop, one ``model.step`` call per time step (reference);
- ``fused``: one ``model(x_window, state)`` call per window;
- ``fused-detached``: for ``tbptt_steps=1`` with ``update="sequence"`` and a model
  that advertises ``supports_detach_every_step`` (see ``ignite_lstm.models``), one
  ``model(x_chunk, state, detach_every_step=True)`` call per ``chunk_steps`` steps.

``execution="auto"`` takes the fastest exact path for the settings.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import ignite.distributed as idist
import torch
import torch.nn as nn
from ignite.engine import Engine, EventEnum
from ignite.utils import convert_tensor

from ignite_lstm.execution import (
    resolve_execution,
    run_steps,
    select_execution,
    step_fn,
    unwrap,
    without_grad_sync,
)
from ignite_lstm.losses import elementwise_loss
from ignite_lstm.state import detach_state

__all__ = ["TimeEvents", "create_trainer", "create_evaluator", "select_execution"]  # select_execution: from execution.py

logger = logging.getLogger(__name__)

UPDATES = ("sequence", "window")


class TimeEvents(EventEnum):
    """Events fired inside one trainer iteration, around the real computation.

    - ``WINDOW_STARTED`` / ``WINDOW_COMPLETED``: before and after each truncated-BPTT
      window is computed (and, with ``update="window"``, its optimizer step taken), on
      the ``fused`` and ``stepwise`` paths. A handler at ``WINDOW_STARTED`` affects its
      window (the learning-rate schedules rely on it). At ``WINDOW_COMPLETED``
      ``engine.state.window_loss`` holds the window's loss (a 0-dim tensor, no graph).
      Not fired on ``fused-detached``, where no window is computed on its own.
    - ``CHUNK_COMPLETED``: after each part of the batch that is computed in one go, on
      every path: a window on ``fused``/``stepwise``, ``chunk_steps`` one-step windows on
      ``fused-detached``. ``engine.state.window_losses`` holds their losses, a (n,)
      tensor without graph, and ``engine.state.window`` the last of them. Loggers of
      window losses listen here (``attach_tensorboard`` does).

    ``engine.state.window`` counts windows since the start of training
    (``(iteration - 1) * windows_per_batch + index``, so it survives a resume), which
    makes ``TimeEvents.WINDOW_COMPLETED(every=100)`` work.
    """

    WINDOW_STARTED = "window_started"
    WINDOW_COMPLETED = "window_completed"
    CHUNK_COMPLETED = "chunk_completed"


def _prepare(batch, device, non_blocking):
    x, y = batch[0], batch[1]
    return convert_tensor(x, device, non_blocking), convert_tensor(y, device, non_blocking)


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
    chunk_steps: int = 250,
    non_blocking: bool = False,
    prepare_batch: Callable = _prepare,
    engine: str | None = None,
) -> Engine:
    """Create an Ignite trainer that steps a stateful model one time step per call.

    Args:
        model: any module with ``forward(x, state=None) -> (y, state)`` for x (B, T, F);
            ``step(x_t, state) -> (y_t, state)`` for x_t (B, F) is used when present.
            The state may be None, a tensor, a tuple or a dict of tensors.
        optimizer: the optimizer of ``model``'s parameters.
        loss_fn: ``loss_fn(y_pred, y)`` on (B, K, O) windows; the reported loss is the
            mean over all T steps (exact for mean-reduced losses).
        tbptt_steps: window length K: the state is detached every K steps
            (1 is the literal L = 1 setting: no gradient through time).
        update: ``"sequence"`` (one optimizer step per batch, gradients summed over
            windows) or ``"window"`` (one optimizer step per window).
        grad_clip: max gradient norm before each optimizer step, or None.
        device: where batches are moved (the model is not moved).
        execution: ``"auto"``, ``"fused"`` or ``"stepwise"``, see ``select_execution``.
        chunk_steps: steps per chunk of the ``fused-detached`` path (bounds memory).
        non_blocking: passed to the batch transfer.
        prepare_batch: ``(batch, device, non_blocking) -> (x, y)``.
        engine: deprecated name of ``execution``.

    Returns:
        An ``Engine`` whose output is ``{"loss": float, "grad_norm": float}`` (with several
        processes, the loss is the mean over them: the loss of the global batch) and which
        fires the ``TimeEvents``. ``trainer.state.execution`` names the path taken
        (``trainer.execution`` too, deprecated).

    Example:
        >>> model = StatefulLSTM(5, 32)
        >>> opt = torch.optim.Adam(model.parameters(), 1e-3)
        >>> trainer = create_trainer(model, opt, nn.MSELoss(), tbptt_steps=100)
        >>> @trainer.on(TimeEvents.WINDOW_COMPLETED(every=10))
        ... def log_window(engine):
        ...     print(engine.state.window, engine.state.window_loss.item())
    """
    _check_positive_int("tbptt_steps", tbptt_steps)
    _check_positive_int("chunk_steps", chunk_steps)
    if update not in UPDATES:
        raise ValueError(f"Argument update should be one of {UPDATES}, got {update!r}.")
    if grad_clip is not None and (not isinstance(grad_clip, (int, float)) or isinstance(grad_clip, bool)):
        raise TypeError(f"Argument grad_clip should be a number or None, got {type(grad_clip).__name__}.")
    if grad_clip is not None and not grad_clip > 0:
        raise ValueError(f"Argument grad_clip should be positive or None, got {grad_clip}.")
    path = select_execution(model, loss_fn, tbptt_steps, update, resolve_execution(execution, engine))
    step = step_fn(model)
    elementwise = elementwise_loss(loss_fn)
    params = [p for p in model.parameters() if p.requires_grad]

    def optimizer_step(report_norm: bool = True) -> torch.Tensor | None:
        # Only the batch's last step reports its norm: without clipping, computing it for
        # every window would add a reduction over all gradients to the per-window loop.
        norm = None
        if grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
        elif report_norm:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        optimizer.step()
        return norm

    def update_windows(engine: Engine, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        T = x.shape[1]
        n_windows = math.ceil(T / tbptt_steps)
        first = (engine.state.iteration - 1) * n_windows
        state = None  # every sequence of the batch starts here
        total = y.new_zeros(())
        norm = None
        if update == "sequence":
            optimizer.zero_grad(set_to_none=True)
        for w in range(n_windows):
            start, stop = w * tbptt_steps, min(T, (w + 1) * tbptt_steps)
            engine.state.window = first + w + 1
            engine.fire_event(TimeEvents.WINDOW_STARTED)
            if update == "window":
                optimizer.zero_grad(set_to_none=True)
            last = update == "window" or w == n_windows - 1
            with without_grad_sync(model, last):
                x_w = x[:, start:stop]
                y_pred, state = run_steps(step, x_w, state) if path == "stepwise" else model(x_w, state)
                loss = loss_fn(y_pred, y[:, start:stop])
                (loss * ((stop - start) / T) if update == "sequence" else loss).backward()
            state = detach_state(state)  # the window boundary
            if update == "window":
                norm = optimizer_step(report_norm=w == n_windows - 1)
            loss = loss.detach()
            total += loss * (stop - start)
            engine.state.window_loss = loss
            engine.fire_event(TimeEvents.WINDOW_COMPLETED)
            engine.state.window_losses = loss.reshape(1)
            engine.fire_event(TimeEvents.CHUNK_COMPLETED)
        if update == "sequence":
            norm = optimizer_step()
        return total / T, norm

    def update_detached(engine: Engine, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # tbptt_steps == 1, update == "sequence": every step is a window, computed a chunk at a time.
        T = x.shape[1]
        first = (engine.state.iteration - 1) * T
        state = None
        total = y.new_zeros(())
        optimizer.zero_grad(set_to_none=True)
        for start in range(0, T, chunk_steps):
            stop = min(T, start + chunk_steps)
            with without_grad_sync(model, stop == T):
                y_pred, state = model(x[:, start:stop], state, detach_every_step=True)
                loss = loss_fn(y_pred, y[:, start:stop])
                (loss * ((stop - start) / T)).backward()
            total += loss.detach() * (stop - start)
            step_losses = elementwise(y_pred.detach(), y[:, start:stop])  # (B, C, O)
            engine.state.window_losses = step_losses.transpose(0, 1).reshape(stop - start, -1).mean(1)  # (C,)
            engine.state.window = first + stop
            engine.fire_event(TimeEvents.CHUNK_COMPLETED)
        return total / T, optimizer_step()

    body = update_detached if path == "fused-detached" else update_windows

    def _update(engine: Engine, batch) -> dict[str, float]:
        model.train()
        x, y = prepare_batch(batch, device, non_blocking)
        loss, norm = body(engine, x, y)
        if idist.get_world_size() > 1:
            # Every rank reports (and TerminateOnNan stops on) the same loss; the gradient
            # norm already is the same after DDP's averaging.
            loss = idist.all_reduce(loss) / idist.get_world_size()
        return {"loss": loss.item(), "grad_norm": float(norm)}

    trainer = Engine(_update)
    trainer.register_events(*TimeEvents, event_to_attr={e: "window" for e in TimeEvents})
    trainer.state.window_loss = None
    trainer.state.window_losses = None
    trainer.state.execution = path
    trainer.execution = path  # deprecated alias of state.execution
    logger.debug("Trainer execution path: %s", path)
    return trainer


def create_evaluator(
    model: nn.Module,
    metrics: dict | None = None,
    *,
    device: str | torch.device | None = None,
    execution: str = "auto",
    non_blocking: bool = False,
    prepare_batch: Callable = _prepare,
    engine: str | None = None,
) -> Engine:
    """Create an Ignite evaluator: every sequence from a reset state through all T steps.

    One evaluator serves the train, validation and test splits. The metrics see
    every time step of every sequence once: the output is
    ``{"y_pred": (B*T, O), "y": (B*T, O), "x": (B*T, F)}``.

    Args:
        model: a model following the contract of ``create_trainer``.
        metrics: name -> Ignite ``Metric``, attached under that name.
        device: where batches are moved.
        execution: ``"auto"``/``"fused"`` (one ``model(x)`` call per batch) or
            ``"stepwise"`` (one ``model.step`` call per time step).
        non_blocking: passed to the batch transfer.
        prepare_batch: ``(batch, device, non_blocking) -> (x, y)``.
        engine: deprecated name of ``execution``.

    Returns:
        An ``Engine``; after ``evaluator.run(loader)`` the values are in
        ``evaluator.state.metrics``.

    Example:
        >>> evaluator = create_evaluator(model, build_metrics([1.0, 3.0, 5.0, 7.0]))
        >>> evaluator.run(loader).metrics["mse"]
    """
    execution = resolve_execution(execution, engine)
    net = unwrap(model)  # no gradients here, so no DDP hooks are needed
    step = step_fn(net)

    @torch.no_grad()
    def _infer(_: Engine, batch) -> dict[str, torch.Tensor]:
        net.eval()
        x, y = prepare_batch(batch, device, non_blocking)
        y_pred, _ = run_steps(step, x, None) if execution == "stepwise" else net(x)
        return {
            "y_pred": y_pred.reshape(-1, y_pred.shape[-1]),
            "y": y.reshape(-1, y.shape[-1]),
            "x": x.reshape(-1, x.shape[-1]),
        }

    evaluator = Engine(_infer)
    for name, metric in (metrics or {}).items():
        metric.attach(evaluator, name)
    return evaluator
