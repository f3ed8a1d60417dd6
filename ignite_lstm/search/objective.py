"""The objective of a search over any model: a builder makes a trial's engines, the search trains them.

``build(trial)`` draws the trial's parameters (``trial.suggest_*``) and returns a ``TrialRun``:
the model's trainer and validation evaluator (``create_trainer``/``create_evaluator`` or any
Ignite engines), the data and the epochs. ``run_trial`` validates every epoch (unless the
builder's own handler does), prunes from the validations (``attach_pruning``), and returns the
last validation's metric; with ``repeats`` R it builds and trains the trial R times (torch's
generator seeded ``seed + r`` before each build) and returns the mean, reporting the repeats'
epochs one after another (step ``r * max_epochs + epoch``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from ignite.engine import Engine, Events

from ignite_lstm.search.pruning import attach_pruning, quiet_pruned

__all__ = ["TrialRun", "run_trial"]


@dataclass
class TrialRun:
    """What a builder returns for one trial.

    Attributes:
        trainer: the trainer (an Ignite ``Engine``).
        evaluator: the validation evaluator, with the study's metric attached.
        train_data: what ``trainer.run`` takes.
        max_epochs: the epochs of a trial that is not pruned.
        val_data: what ``evaluator.run`` takes after every epoch; None: the builder has attached
            the validation itself (e.g. a ``WarmStart`` stream evaluation every epoch).
    """

    trainer: Engine
    evaluator: Engine
    train_data: Any
    max_epochs: int
    val_data: Any = None


def run_trial(trial: Any, build: Callable[[Any], TrialRun], metric: str, *, repeats: int = 1, seed: int = 0) -> float:
    """Train one trial (``repeats`` times) and return its metric: the mean of the repeats' last validations.

    Raises:
        optuna.TrialPruned: the pruner stopped it (the run ended normally first).
        TypeError: the builder returned something else than a ``TrialRun``.
        ValueError: a run ended without a validation of ``metric``.
    """
    values = []
    for r in range(repeats):
        torch.manual_seed(seed + r)
        run = build(trial)
        if not isinstance(run, TrialRun):
            raise TypeError(f"The search's build(trial) should return a TrialRun, got {type(run).__name__}.")
        if run.val_data is not None:
            run.trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _, run=run: run.evaluator.run(run.val_data))
        pruning = attach_pruning(trial, run.trainer, run.evaluator, metric, step_offset=r * run.max_epochs)
        with quiet_pruned():
            run.trainer.run(run.train_data, max_epochs=run.max_epochs)
        pruning.raise_if_pruned()
        if pruning.last is None:
            raise ValueError(
                f"Trial {trial.number}: the run had no validation of {metric!r}; give TrialRun a val_data, or "
                f"run the evaluator at every epoch."
            )
        values.append(pruning.last)
        trial.set_user_attr("epochs", run.trainer.state.epoch)
    value = sum(values) / len(values)
    if repeats > 1:
        trial.set_user_attr("repeats", values)
    return value if math.isfinite(value) else float("nan")
