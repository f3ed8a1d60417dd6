"""The objective of a search over any model: a builder makes a trial's engines, the search trains them.

``build(trial)`` draws the trial's parameters (``trial.suggest_*``) and returns a ``TrialRun``:
the model's trainer and validation evaluator (``create_trainer``/``create_evaluator`` or any
Ignite engines), the data and the epochs. ``run_trial`` validates every epoch (unless the
builder's own handler does), prunes from the validations (``attach_pruning``), and returns the
last validation's metric; with ``repeats`` R it builds and trains the trial R times (torch's
generator seeded ``seed + r`` before each build), or once per variant of a list of seeds,
thread counts and instruction sets (``ignite_lstm.search.repeats``), and returns their
aggregate (mean, worst or a quantile), reporting after each epoch the aggregate of the repeats
so far, one repeat after another (step ``r * max_epochs + epoch``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from ignite.engine import Engine, Events

from ignite_lstm.search.pruning import attach_pruning, quiet_pruned
from ignite_lstm.search.repeats import Report, Variant, run_repeats

__all__ = ["TrialRun", "resolve_repeats", "run_trial"]


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


def resolve_repeats(repeats: int | Sequence[Variant | dict[str, Any]], seed: int | None = 0) -> list[Variant]:
    """The variants of ``repeats``: an int R is R seeds ``seed + r``; a list, its variants (dicts or ``Variant``).

    Raises:
        TypeError, ValueError: not a positive int or a non-empty list of variants.
    """
    if isinstance(repeats, int) and not isinstance(repeats, bool):
        if repeats < 1:
            raise ValueError(f"Argument repeats should be positive, got {repeats}.")
        return [Variant(seed=(seed or 0) + r) for r in range(repeats)]
    if isinstance(repeats, (str, bytes)) or not isinstance(repeats, Sequence):
        raise TypeError(f"Argument repeats should be an integer or a list of variants, got {type(repeats).__name__}.")
    if not repeats:
        raise ValueError("Argument repeats should not be an empty list.")
    variants = [Variant.of(v) for v in repeats]
    labels = [v.label for v in variants]
    if len(set(labels)) < len(labels):
        raise ValueError(f"Argument repeats has a variant twice: {labels}.")
    return variants


def _train_built(
    trial: Any, variant: Variant, report: Report, *, build: Callable[[Any], TrialRun], metric: str
) -> float:
    """One repeat: build the trial's engines, train them, validate and report every epoch."""
    run = build(trial)
    if not isinstance(run, TrialRun):
        raise TypeError(f"The search's build(trial) should return a TrialRun, got {type(run).__name__}.")
    if run.val_data is not None:
        run.trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _, run=run: run.evaluator.run(run.val_data))
    pruning = attach_pruning(
        trial, run.trainer, run.evaluator, metric, report=lambda epoch, value: report(epoch, value, run.max_epochs)
    )
    with quiet_pruned():
        run.trainer.run(run.train_data, max_epochs=run.max_epochs)
    pruning.raise_if_pruned()
    if pruning.last is None:
        raise ValueError(
            f"Trial {trial.number}: the run had no validation of {metric!r}; give TrialRun a val_data, or "
            f"run the evaluator at every epoch."
        )
    trial.set_user_attr("epochs", run.trainer.state.epoch)
    return pruning.last


def run_trial(
    trial: Any,
    build: Callable[[Any], TrialRun],
    metric: str,
    *,
    repeats: int | Sequence[Variant | dict[str, Any]] = 1,
    seed: int | None = 0,
    aggregate: str = "mean",
    q: float = 0.5,
    direction: str | None = None,
    storage: str | None = None,
    warmup_epochs: int = 0,
) -> float:
    """Train one trial (once per repeat) and return its metric: the aggregate of the repeats' last validations.

    Args:
        trial: the Optuna trial.
        build: ``trial -> TrialRun``, called once per repeat.
        metric: the validation metric.
        repeats: an int R (seeds ``seed + r``) or a list of variants (``Variant`` or dicts with
            ``seed``, ``threads``, ``isa``; see ``ignite_lstm.search.repeats``).
        seed: the first seed of an int ``repeats``.
        aggregate: ``"worst"``, ``"mean"`` or ``"quantile"`` (with ``q``).
        q: the quantile, from the best value (0) to the worst (1).
        direction: the study's direction; None: ``trial.study``'s.
        storage: the study's storage URL, for a repeat in a child process (``isa: avx2``).
        warmup_epochs: epochs at the start of every repeat in which the trial is not pruned.

    Raises:
        optuna.TrialPruned: the pruner stopped it (the run ended normally first).
        TypeError: the builder returned something else than a ``TrialRun``.
        ValueError: a run ended without a validation of ``metric``.
    """
    variants = resolve_repeats(repeats, seed)
    if direction is None:
        direction = trial.study.direction.name.lower()
    train = partial(_train_built, build=build, metric=metric)
    value = run_repeats(
        trial,
        variants,
        train,
        how=aggregate,
        q=q,
        direction=str(direction),
        storage=storage,
        warmup_epochs=warmup_epochs,
    )
    return value if math.isfinite(value) else float("nan")
