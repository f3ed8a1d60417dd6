"""Learning-rate schedules from Ignite's param schedulers, stepped once per optimizer step."""

from __future__ import annotations

from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import (
    CosineAnnealingScheduler,
    LRScheduler,
    PiecewiseLinear,
    ReduceLROnPlateauScheduler,
    create_lr_scheduler_with_warmup,
)

from ignite_lstm.engines import TimeEvents

__all__ = ["setup_lr_scheduler", "SCHEDULES"]

SCHEDULES = ("none", "step", "cosine", "plateau")
WARMUP_START_FACTOR = 0.01  # warm-up starts at 1% of the base learning rate


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
) -> Any:
    """Attach a learning-rate schedule and return it (None for ``"none"``).

    The schedules count optimizer steps: ``steps_per_epoch`` of them per epoch
    (batches, times windows when ``update="window"``), and are called before each
    step (``ITERATION_STARTED`` or ``TimeEvents.WINDOW_STARTED``).

    - ``step``: ``lr * gamma ** (epoch // step_size)`` (epoch counted from 0);
    - ``cosine``: from ``lr`` down to ``min_lr`` over all remaining steps;
    - ``plateau``: ``lr * factor`` when the validation ``monitor`` has not improved
      for ``patience`` validations (Ignite's ``ReduceLROnPlateauScheduler``).

    Each may start with a linear warm-up from 1% of ``lr`` over ``warmup_epochs``.

    Returns:
        The scheduler (it has ``state_dict``/``load_state_dict`` for checkpoints).
    """
    if name not in SCHEDULES:
        raise ValueError(f"Argument name should be one of {SCHEDULES}, got {name!r}.")
    if name == "none":
        return None
    event = TimeEvents.WINDOW_STARTED if update == "window" else Events.ITERATION_STARTED
    total = epochs * steps_per_epoch
    warmup = int(round(warmup_epochs * steps_per_epoch))
    if warmup >= total:
        raise ValueError(f"Argument warmup_epochs ({warmup_epochs}) should be shorter than the run ({epochs} epochs).")
    if name == "plateau":
        scheduler = ReduceLROnPlateauScheduler(
            optimizer, metric_name=monitor, trainer=trainer, mode=mode, patience=patience, factor=factor, min_lr=min_lr
        )
        if val_evaluator is None:
            raise ValueError("Argument val_evaluator is required by the plateau schedule.")
        val_evaluator.add_event_handler(Events.COMPLETED, scheduler)
        if warmup:
            ramp = PiecewiseLinear(optimizer, "lr", [(0, lr * WARMUP_START_FACTOR), (warmup, lr)])
            # Only during the warm-up, so that the ramp never undoes a plateau reduction.
            trainer.add_event_handler(event(event_filter=lambda _, n: n <= warmup + 1), ramp)
            return _Pair(scheduler, ramp)
        return scheduler
    if name == "cosine":
        base = CosineAnnealingScheduler(optimizer, "lr", lr, min_lr, cycle_size=max(2, total - warmup + 1))
    else:  # step
        base = LRScheduler(
            torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size * steps_per_epoch, gamma=gamma)
        )
    if warmup:
        base = create_lr_scheduler_with_warmup(base, lr * WARMUP_START_FACTOR, warmup, warmup_end_value=lr)
    trainer.add_event_handler(event, base)
    return base


class _Pair:
    """Plateau schedule plus its warm-up ramp, checkpointed together."""

    def __init__(self, plateau: Any, ramp: Any) -> None:
        self.plateau, self.ramp = plateau, ramp

    def state_dict(self) -> dict:
        return {"plateau": self.plateau.state_dict(), "ramp": self.ramp.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.plateau.load_state_dict(state["plateau"])
        self.ramp.load_state_dict(state["ramp"])
