"""The loop every worker of a study runs: count, ask, train, tell, until the study has its trials.

Workers share a study through its storage; each takes the storage's lock (a file beside an
SQLite or journal file) to count the trials and start one atomically, so that together they
stop at exactly ``target`` finished (complete or pruned) trials. A trial whose worker died is
marked failed by the next worker that looks (``fail_dead_trials``); a trial that raises one of
``bad_point`` (a point of the space that fails, e.g. a diverged loss) fails and the study goes
on, until ``target`` trials in a row have failed (``StudyFailed``); any other exception, Ctrl-C
included, fails the running trial and ends the worker.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ignite_lstm.search.repeats import CurrentStepPruner
from ignite_lstm.search.storage import fail_dead_trials, heartbeat, locked, retry_failed, tell, worker_id

__all__ = ["StudyFailed", "run_worker", "make_sampler", "make_pruner", "SAMPLERS", "PRUNERS"]

logger = logging.getLogger("ignite_lstm.search")

SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "successive_halving", "none")


class StudyFailed(RuntimeError):
    """As many trials in a row failed as the study wants to finish: something is wrong with every trial."""


def make_sampler(name: str, seed: int | None) -> Any:
    """Optuna's sampler ``"tpe"`` or ``"random"``, seeded."""
    import optuna

    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    raise ValueError(f"Argument sampler should be one of {SAMPLERS}, got {name!r}.")


def make_pruner(name: str, startup_trials: int = 5, warmup_epochs: int = 0, *, repeats: int = 1) -> Any:
    """Optuna's pruner: ``"median"``, ``"successive_halving"`` or ``"none"``; no pruning before ``warmup_epochs + 1``.

    With ``repeats`` > 1 the median pruner judges a trial on its last step's value (the
    aggregate of its repeats so far, ``CurrentStepPruner``), not its best step so far.
    """
    import optuna

    first = warmup_epochs + 1  # the first epoch at which a trial can be pruned
    if name == "median":
        median = optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=first)
        return median if repeats == 1 else CurrentStepPruner(median)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"Argument pruner should be one of {PRUNERS}, got {name!r}.")


def run_worker(
    study: Any,
    storage: Any,
    lock: Path | None,
    objective: Callable[[Any], float],
    *,
    target: int,
    sampler_for: Callable[[int], Any] | None = None,
    bad_point: tuple[type[BaseException], ...] = (),
    label: str = "value",
    failures_where: str = "the study's trials",
) -> int:
    """Run trials until the study has ``target`` finished (complete or pruned) ones.

    Args:
        study, storage, lock: from ``create_study``.
        objective: ``trial -> value``; raises ``optuna.TrialPruned`` for a pruned trial.
        target: the finished trials the study wants.
        sampler_for: ``trials so far -> sampler`` set before each ``ask`` (seeded by the trial's
            number: one worker repeats its study, several draw different points); None: keep the study's.
        bad_point: exceptions that fail the trial and let the study go on.
        label: the value's name in the log.
        failures_where: where the failed trials' reasons can be read (in ``StudyFailed``'s message).

    Returns:
        The number of trials this worker ran.

    Raises:
        StudyFailed: ``target`` trials of this worker failed in a row.
        KeyboardInterrupt: Ctrl-C (the trial is marked failed).
    """
    import optuna
    from optuna.trial import TrialState

    me, ran, failed_in_a_row = worker_id(), 0, 0
    while True:
        with locked(lock):
            fail_dead_trials(study, storage)
            trials = study.get_trials(deepcopy=False)
            if sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING) for t in trials) >= target:
                return ran
            if failed_in_a_row >= target:
                raise StudyFailed(
                    f"{failed_in_a_row} trials in a row of study {study.study_name!r} failed: see their "
                    f"fail_reason in {failures_where}"
                )
            if sampler_for is not None:
                study.sampler = sampler_for(len(trials))
            trial = study.ask()
            trial.set_user_attr("worker", me)
        ran += 1
        started = time.monotonic()
        try:
            with heartbeat(storage, study, trial.number):
                value = objective(trial)
        except optuna.TrialPruned as exc:
            tell(study, trial, state=TrialState.PRUNED)
            outcome, failed_in_a_row = f"pruned at epoch {trial.user_attrs.get('epochs')}", 0
            logger.debug("Trial %d: %s", trial.number, exc)
        except bad_point as exc:  # a bad point of the space: the study goes on
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}")
            tell(study, trial, state=TrialState.FAIL)
            outcome, failed_in_a_row = f"failed: {exc}", failed_in_a_row + 1
        except BaseException as exc:
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            tell(study, trial, state=TrialState.FAIL)
            if isinstance(exc, KeyboardInterrupt):  # the same command continues: its finished repeats are kept
                with locked(lock):
                    retry_failed(study, study.get_trials(deepcopy=False)[trial.number])
            raise
        else:
            if math.isfinite(value):
                tell(study, trial, value)
                outcome, failed_in_a_row = f"complete, {label}={value:.6g}", 0
            else:  # Optuna fails such a trial anyway
                trial.set_user_attr("fail_reason", f"{label} is {value}")
                tell(study, trial, state=TrialState.FAIL)
                outcome, failed_in_a_row = f"failed: {label} is {value}", failed_in_a_row + 1
        progress(study, trial.number, outcome, time.monotonic() - started, target, label)


def progress(study: Any, number: int, outcome: str, seconds: float, target: int, label: str) -> None:
    """One line per finished trial: how it ended, the study's count and its best so far."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    best = ""
    if complete:
        pick = min if study.direction.name.lower() == "minimize" else max
        b = pick(complete, key=lambda t: t.value)
        best = f"; best so far: trial {b.number}, {label}={b.value:.6g}"
    logger.info("Trial %d %s (%.1f s) | %d of %d finished%s", number, outcome, seconds, done, target, best)
