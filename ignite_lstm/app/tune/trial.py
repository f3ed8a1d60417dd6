"""One trial of the tune command: its parameters, then one real run of ``training.run`` per repeat.

A trial draws its values (``tune.space``) and trains them once per repeat of ``tune.repeats``
(``ignite_lstm.search.repeats``: the seeds, thread counts and instruction sets; by default one
repeat, the config's own seed and threads), each in its own run folder,
``<study>/trials/trial-NNNN`` (one repeat) or ``trial-NNNN-s1-t2-avx2``. After each validated
epoch the aggregate of the repeats so far (``tune.aggregate``) goes to the pruner, at step
``r * E + epoch`` (E: the most epochs a trial can train); the trial's value is the aggregate
of the repeats' final ``val/<metric>``. An ``isa: avx2`` repeat runs in a child process, which
imports this module: what it runs and raises lives here, not in the command's ``__main__``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from ignite_lstm.app.run.rundir import prepare_run
from ignite_lstm.app.tune.settings import TuneSettings, trial_config
from ignite_lstm.app.tune.storage import storage_url
from ignite_lstm.search.pruning import attach_pruning, quiet_pruned
from ignite_lstm.search.repeats import Report, Variant, run_repeats

__all__ = ["TrialDiverged", "max_epochs", "run_name", "train_trial"]

logger = logging.getLogger("ignite_lstm.app.tune.study")


class TrialDiverged(RuntimeError):
    """The trial's loss became NaN or infinite."""


class _Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the trial's training (its checkpoint is in the trial's folder)."""


def _suggest(trial: Any, d: Any) -> Any:
    if d.type == "float":
        return trial.suggest_float(d.key, d.low, d.high, log=d.log, step=d.step)
    if d.type == "int":
        return trial.suggest_int(d.key, int(d.low), int(d.high), step=int(d.step or 1), log=d.log)
    return trial.suggest_categorical(d.key, list(d.choices))


@contextlib.contextmanager
def _trial_log(run_dir: str) -> Iterator[None]:
    """The trial's ``train.log`` in its run folder, as ``run.py`` writes one."""
    handler = logging.FileHandler(Path(run_dir) / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def max_epochs(cfg: Any, settings: TuneSettings) -> int:
    """E: the most epochs a trial of the study trains (``train.epochs``, or the top of its range in the space)."""
    for d in settings.space:
        if d.key == "train.epochs":
            return int(max(d.choices) if d.type == "categorical" else d.high)  # type: ignore[type-var]
    return int(cfg.train.epochs)


def run_name(number: int, variant: Variant, settings: TuneSettings) -> str:
    """``trial-NNNN`` for a study of one repeat, else ``trial-NNNN-<variant>`` (``trial-0003-s1-t2-avx2``)."""
    if len(settings.repeats) == 1:
        return f"trial-{number:04d}"
    return f"trial-{number:04d}-{variant.label.replace(' ', '-')}"


def _train_repeat(
    trial: Any,
    variant: Variant,
    report: Report,
    *,
    cfg: Any,
    settings: TuneSettings,
    study_dir: str,
    params: dict[str, Any],
    epochs: int,
) -> float:
    """One repeat: a run of ``training.run`` in its folder, reporting every validation, pruned on the aggregate."""
    from ignite.engine import Events

    from ignite_lstm.app.run.training import run

    top: dict[str, Any] = {
        "output_dir": str(Path(study_dir) / "trials"),
        "name": run_name(trial.number, variant, settings),
        "resume": None,
    }
    if variant.seed is not None:
        top["seed"] = variant.seed
    if variant.threads is not None:
        top["threads"] = variant.threads
    run_cfg = trial_config(cfg, params, **top)
    run_dir = prepare_run(run_cfg, "trial")["run_dir"]
    if variant == settings.repeats[0]:
        trial.set_user_attr("run_dir", run_dir)  # best.yaml is its config

    def prune(trainer: Any, evaluator: Any, _: Any) -> None:
        # Reported at the end of a validated epoch, after the epoch's history and checkpoints are written; a
        # pruned trial ends the trainer's run (terminate: its COMPLETED handlers close TensorBoard's files) and
        # TrialPruned leaves training.run from the trainer's last COMPLETED handler, before any final evaluation.
        pruning = attach_pruning(
            trial, trainer, evaluator, settings.metric, report=lambda epoch, value: report(epoch, value, epochs)
        )
        trainer.add_event_handler(Events.COMPLETED, lambda _: pruning.raise_if_pruned())

    with _trial_log(run_dir), quiet_pruned():  # the pruned trial is said once, by the progress line
        outcome = run(0, run_cfg, run_dir, None, attach=[prune])
    if outcome.status == "interrupted":
        raise _Interrupted(outcome.message)
    if outcome.status != "done":  # diverged: a bad point of the space
        raise TrialDiverged(outcome.message)
    trial.set_user_attr("epochs", outcome.epochs)
    return float(outcome.metrics[f"val/{settings.metric}"])


def train_trial(trial: Any, cfg: Any, settings: TuneSettings, study_dir: Path) -> float:
    """One trial: draw its values, train its repeats, return the aggregate of their final validation metric."""
    params = {d.key: _suggest(trial, d) for d in settings.space}
    logger.info(
        "Trial %d started: %s",
        trial.number,
        ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()),
    )
    retry_of = trial.user_attrs.get("retry_of")
    if retry_of is not None:  # a retry of a killed trial: its first repeat's folder, unless trained again
        old = trial.study.get_trials(deepcopy=False)[retry_of]
        logger.info(
            "Trial %d retries trial %d, whose worker died, reusing its finished repeats", trial.number, retry_of
        )
        if old.user_attrs.get("run_dir"):
            trial.set_user_attr("run_dir", old.user_attrs["run_dir"])
    train = partial(
        _train_repeat,
        cfg=cfg,
        settings=settings,
        study_dir=str(study_dir),
        params=params,
        epochs=max_epochs(cfg, settings),
    )
    return run_repeats(
        trial,
        settings.repeats,
        train,
        how=settings.aggregate,
        q=settings.q,
        direction=settings.direction,
        storage=storage_url(settings, study_dir),
        warmup_epochs=settings.pruner_warmup_epochs,
    )
