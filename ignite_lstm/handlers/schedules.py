"""Learning-rate schedules from Ignite's param schedulers, stepped once per optimizer step.

With ``S`` optimizer steps in the run, steps numbered ``s = 0 .. S-1`` and a
warm-up of ``W`` steps (``W = 0``: none; else at least 2), the rate of step ``s`` is:

- warm-up, ``s < W``: ``lr * (f + (1 - f) * s / (W - 1))`` with ``f = 0.01``, a
  line from 1% of ``lr`` at the first step to ``lr`` at step ``W - 1``;
- after it, with ``u = s - (W - 1)`` (``u = s`` without warm-up) and
  ``U = S - (W - 1)`` (``U = S``) the steps left:

  - ``step``: ``lr * gamma ** (u // (step_size * steps_per_epoch))``;
  - ``cosine``: ``min_lr + (lr - min_lr) * (1 + cos(pi * u / U)) / 2``; past the
    planned ``S`` steps (``steps_per_epoch`` was an underestimate) the rate stays at
    its last value, with a warning, instead of starting a new cycle;
  - ``onecycle``: torch's ``OneCycleLR`` over all ``S`` steps (wrapped by Ignite's
    ``LRScheduler``): a cosine rise from ``lr / 25`` to ``lr`` over the warm-up
    (``pct_start = W / S``; 0.3 when ``W = 0``), then a cosine fall to ``lr / 25e4``;
    with Adam it also cycles ``beta1`` between 0.95 and 0.85;
  - ``plateau``: ``lr``, times ``factor`` whenever the validation ``monitor`` has not
    improved (by more than torch's relative threshold 1e-4) for more than
    ``patience`` validations, never below ``min_lr``; validations during the
    warm-up are not counted.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.engine.events import CallableEventWithFilter
from ignite.handlers import (
    CosineAnnealingScheduler,
    LRScheduler,
    ParamScheduler,
    PiecewiseLinear,
    ReduceLROnPlateauScheduler,
    create_lr_scheduler_with_warmup,
)

from ignite_lstm.engine.factories import TimeEvents

__all__ = ["setup_lr_scheduler", "steps_per_epoch", "warmup_steps", "SCHEDULES", "WARMUP_START_FACTOR"]

logger = logging.getLogger(__name__)

SCHEDULES = ("none", "step", "cosine", "plateau", "onecycle")
WARMUP_START_FACTOR = 0.01  # warm-up starts at 1% of the base learning rate


def steps_per_epoch(n_batches: int, n_steps: int, tbptt_steps: int, update: str) -> int:
    """Optimizer steps per epoch: one per batch, or one per window."""
    return n_batches * (math.ceil(n_steps / tbptt_steps) if update == "window" else 1)


def warmup_steps(warmup_epochs: float, steps_per_epoch: int) -> int:
    """Warm-up length in optimizer steps: 0 for none, else at least 2 (a line needs two points)."""
    if warmup_epochs <= 0:
        return 0
    return max(2, int(round(warmup_epochs * steps_per_epoch)))


def setup_lr_scheduler(
    trainer: Engine,
    optimizer: torch.optim.Optimizer,
    *,
    name: str,
    lr: float,
    epochs: int,
    steps_per_epoch: int,
    update: str,
    warmup_epochs: float = 0.0,
    min_lr: float = 0.0,
    step_size: int = 10,
    gamma: float = 0.5,
    val_evaluator: Engine | None = None,
    monitor: str = "mse",
    mode: str = "min",
    patience: int = 5,
    factor: float = 0.5,
    event_filter: Callable[[Engine, int], bool] | None = None,
) -> Any:
    """Attach a learning-rate schedule (see the module docstring) and return it.

    The schedules count optimizer steps: ``steps_per_epoch`` of them per epoch
    (batches, times windows when ``update="window"``), and set the rate before each
    step (``Events.ITERATION_STARTED`` or ``TimeEvents.WINDOW_STARTED``).

    Args:
        trainer: the trainer from ``create_trainer``.
        optimizer: its optimizer (one parameter group).
        name: ``"none"``, ``"step"``, ``"cosine"``, ``"plateau"`` or ``"onecycle"``.
        lr: the peak rate (the optimizer's).
        epochs, steps_per_epoch: the run's length.
        update: the trainer's ``update`` (which event is an optimizer step).
        warmup_epochs: linear warm-up length in epochs (may be fractional; 0: none).
        min_lr: cosine end value, plateau floor.
        step_size, gamma: ``step`` decay every ``step_size`` epochs by ``gamma``.
        val_evaluator, monitor, mode, patience, factor: the ``plateau`` schedule's
            validation evaluator, metric, direction (``"min"``/``"max"``), patience and factor.
        event_filter: ``plateau``: an Ignite event filter on the evaluator's ``COMPLETED``; the
            validations it rejects are not counted (a curriculum's ``final_stage_only``).

    Returns:
        None for ``"none"``, else an object with ``state_dict``/``load_state_dict``
        for checkpoints.

    Example:
        >>> scheduler = setup_lr_scheduler(trainer, optimizer, name="cosine", lr=3e-3, epochs=100,
        ...                                steps_per_epoch=20, update="window", warmup_epochs=3)
        >>> to_save["lr_scheduler"] = scheduler
    """
    if name not in SCHEDULES:
        raise ValueError(f"Argument name should be one of {SCHEDULES}, got {name!r}.")
    if name == "none":
        return None
    event: CallableEventWithFilter = TimeEvents.WINDOW_STARTED if update == "window" else Events.ITERATION_STARTED
    total = epochs * steps_per_epoch
    warmup = warmup_steps(warmup_epochs, steps_per_epoch)
    if warmup_epochs >= epochs:
        raise ValueError(f"Argument warmup_epochs ({warmup_epochs}) should be shorter than the run ({epochs} epochs).")
    if warmup >= total:  # shorter in epochs, not in steps: a warm-up takes 2 steps at least
        fitted = total - 1 if total - 1 >= 2 else 0
        logger.warning(
            "A warm-up of %g epochs is %d optimizer steps, as long as the whole run (%d): warming up over %d steps.",
            warmup_epochs,
            warmup,
            total,
            fitted,
        )
        warmup = fitted
    start = lr * WARMUP_START_FACTOR
    if name == "plateau":
        if val_evaluator is None:
            raise ValueError("Argument val_evaluator is required by the plateau schedule.")
        plateau = _Plateau(
            optimizer,
            metric_name=monitor,
            trainer=trainer,
            mode=mode,
            patience=patience,
            factor=factor,
            min_lr=float(min_lr),
            param_group_index=0,
        )

        def after_warmup(evaluator: Engine) -> None:
            if trainer.state.epoch * steps_per_epoch >= warmup:
                plateau(evaluator)

        val_evaluator.add_event_handler(
            Events.COMPLETED(event_filter=event_filter) if event_filter else Events.COMPLETED, after_warmup
        )
        if not warmup:
            return plateau
        ramp = PiecewiseLinear(optimizer, "lr", [(0, start), (warmup - 1, lr)])
        # Only during the warm-up, so that the ramp never undoes a plateau reduction.
        trainer.add_event_handler(event(event_filter=lambda _, n: n <= warmup), ramp)
        return _Pair(plateau, ramp)
    if name == "onecycle":
        pct_start = warmup / total if warmup else 0.3
        scheduler: ParamScheduler = LRScheduler(
            torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total, pct_start=pct_start)
        )
        trainer.add_event_handler(event, scheduler)
        return scheduler
    remaining = total - (warmup - 1) if warmup else total
    if name == "cosine":
        base: Any = CosineAnnealingScheduler(optimizer, "lr", lr, min_lr, cycle_size=max(2, remaining))
    else:  # step; the torch scheduler itself, which create_lr_scheduler_with_warmup knows how to shift
        base = torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size * steps_per_epoch, gamma=gamma)
    if warmup:
        scheduler = create_lr_scheduler_with_warmup(base, start, warmup, warmup_end_value=lr)
    else:
        scheduler = base if name == "cosine" else LRScheduler(base)
    if name == "cosine":  # a cosine cycle restarts after its last step: keep the run inside the one planned
        event = event(event_filter=_planned_steps(total, epochs, steps_per_epoch))
    trainer.add_event_handler(event, scheduler)
    return scheduler


def _planned_steps(total: int, epochs: int, steps_per_epoch: int) -> Callable[[Engine, int], bool]:
    """Event filter: True for optimizer steps 1 .. total; past them False, with one warning."""
    warned: list[int] = []

    def planned(_: Engine, step: int) -> bool:
        if step <= total:
            return True
        if not warned:
            warned.append(step)
            logger.warning(
                "The cosine schedule planned %d optimizer steps (epochs %d x steps_per_epoch %d) and the "
                "run has reached step %d: the learning rate stays at its last value instead of starting a "
                "new cycle. Pass steps_per_epoch of the longest epoch.",
                total,
                epochs,
                steps_per_epoch,
                step,
            )
        return False

    return planned


class _Plateau(ReduceLROnPlateauScheduler):
    """Ignite's plateau scheduler with a checkpointable state.

    Ignite stores a bound method on the torch scheduler, which then appears in its
    ``state_dict`` and cannot be saved with ``weights_only``; it is left out here.
    """

    def state_dict(self) -> Any:
        state = super().state_dict()
        state["scheduler"] = {k: v for k, v in state["scheduler"].items() if not callable(v)}
        return state


class _Pair:
    """Plateau schedule plus its warm-up ramp, checkpointed together."""

    def __init__(self, plateau: Any, ramp: Any) -> None:
        self.plateau, self.ramp = plateau, ramp

    def state_dict(self) -> dict:
        return {"plateau": self.plateau.state_dict(), "ramp": self.ramp.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.plateau.load_state_dict(state["plateau"])
        self.ramp.load_state_dict(state["ramp"])
