"""Pruning a trial from its validations, without Ignite's error line for a pruned run.

``attach_pruning`` reports the validation metric to the Optuna trial after every validated
epoch and, when the study's pruner says so, ends the trainer's run (``terminate``): the run
ends normally, and the caller raises ``optuna.TrialPruned`` outside the engine
(``Pruning.raise_if_pruned``). A pruned trial is then said once in the log, plainly, by the
search's progress line, not also as "Engine run is terminating due to exception: Trial was
pruned" (what a pruning handler that raises inside the engine gives). ``quiet_pruned`` keeps
that line out of the log for code that does raise inside the engine.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
from collections.abc import Callable, Iterator
from typing import Any

from ignite.engine import Engine, Events

from ignite_lstm._internal.compat import engine_logger_name

__all__ = ["Pruning", "attach_pruning", "quiet_pruned"]


class _DropPruned(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = sys.exc_info()[1] if record.exc_info is None else record.exc_info[1]
        return not (record.levelno >= logging.ERROR and type(exc).__name__ == "TrialPruned")


@contextlib.contextmanager
def quiet_pruned() -> Iterator[None]:
    """While inside, Ignite's engines do not log a ``TrialPruned`` that ends their run as an error."""
    engine_logger = logging.getLogger(engine_logger_name())
    drop = _DropPruned()
    engine_logger.addFilter(drop)
    try:
        yield
    finally:
        engine_logger.removeFilter(drop)


class Pruning:
    """What ``attach_pruning`` attached: the reported values and whether the trial was pruned.

    Attributes:
        values: step -> the reported metric.
        pruned_at: the trainer's epoch at which the pruner stopped the trial, or None.
    """

    def __init__(
        self,
        trial: Any,
        trainer: Engine,
        evaluator: Engine,
        metric: str,
        step_offset: int,
        report: Callable[[int, float], bool] | None = None,
    ) -> None:
        self.trial, self.trainer, self.evaluator, self.metric = trial, trainer, evaluator, metric
        self.offset, self.report = step_offset, report
        self.values: dict[int, float] = {}
        self.pruned_at: int | None = None
        self._validated = False
        evaluator.add_event_handler(Events.COMPLETED, self._on_validation)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._on_epoch)

    def _on_validation(self, _: Engine) -> None:
        self._validated = True

    def _on_epoch(self, trainer: Engine) -> None:
        if not self._validated:
            return
        self._validated = False
        metrics = self.evaluator.state.metrics
        if self.metric not in metrics:
            raise KeyError(
                f"The validation evaluator has no metric {self.metric!r} to report to the trial; it has {sorted(metrics)}."
            )
        value, step = float(metrics[self.metric]), self.offset + trainer.state.epoch
        self.values[step] = value
        if self.report is not None:
            prune = self.report(trainer.state.epoch, value)
        elif math.isfinite(value):
            self.trial.report(value, step)
            prune = self.trial.should_prune()
        else:
            prune = False
        if prune:
            self.pruned_at = trainer.state.epoch
            self.trial.set_user_attr("epochs", trainer.state.epoch)
            trainer.terminate()

    @property
    def last(self) -> float | None:
        """The last value reported (None before the first validation)."""
        return self.values[max(self.values)] if self.values else None

    def raise_if_pruned(self) -> None:
        """Raise ``optuna.TrialPruned`` when the pruner stopped the run (call it after ``trainer.run``)."""
        if self.pruned_at is not None:
            import optuna

            raise optuna.TrialPruned(f"pruned at epoch {self.pruned_at}: {self.metric}={self.last:.6g}")


def attach_pruning(
    trial: Any,
    trainer: Engine,
    evaluator: Engine,
    metric: str,
    *,
    step_offset: int = 0,
    report: Callable[[int, float], bool] | None = None,
) -> Pruning:
    """Report ``evaluator``'s ``metric`` to ``trial`` after each validated epoch; prune by ending the run.

    Attach it after the handler that runs the validation at ``EPOCH_COMPLETED``, so that the
    epoch's validation is there when the trainer's epoch ends.

    Args:
        trial: the Optuna trial.
        trainer: the trainer (its epoch is the step, plus ``step_offset``).
        evaluator: the validation evaluator (``evaluator.state.metrics[metric]``).
        metric: the metric's name.
        step_offset: added to the epoch (repeats of a trial report after one another).
        report: ``(epoch, value) -> prune now?`` instead of reporting ``value`` at ``step_offset + epoch``
            (``ignite_lstm.search.repeats`` reports the aggregate over a trial's repeats so far).

    Returns:
        The ``Pruning``: after ``trainer.run``, ``raise_if_pruned()``.
    """
    return Pruning(trial, trainer, evaluator, metric, step_offset, report)
