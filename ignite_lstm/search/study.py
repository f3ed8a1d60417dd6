"""``search``: a hyperparameter search over any model, from Python, with pruning, workers, repeats and a report.

The user's ``build(trial)`` makes a trial's model, data and engines from its parameters
(``trial.suggest_*``) and returns a ``TrialRun`` (``ignite_lstm.search.objective``); the
search validates and prunes every epoch, shares the study among ``workers`` processes on one
storage, repeats a trial over seeds and numeric variants (thread counts, instruction sets) and
selects on the aggregate of its repeats, and writes the study's report. Optuna is imported
when a search runs (the ``tune`` extra), never by ``import ignite_lstm``.

With ``workers`` > 1 the workers are new processes (``spawn``): ``build`` must be picklable,
a function defined at a module's top level (or a ``functools.partial`` of one).
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from ignite_lstm.metrics.directions import metric_direction
from ignite_lstm.search.objective import TrialRun, resolve_repeats, run_trial
from ignite_lstm.search.repeats import Variant, check_aggregate
from ignite_lstm.search.storage import create_study, shown_url
from ignite_lstm.search.worker import PRUNERS, SAMPLERS, make_pruner, make_sampler, run_worker

__all__ = ["search"]

logger = logging.getLogger("ignite_lstm.search")


def _check(trials: int, workers: int, sampler: str, pruner: str, metric: str, direction: Any) -> str:
    for name, value in (("trials", trials), ("workers", workers)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"Argument {name} should be an integer, got {type(value).__name__}.")
        if value < 1:
            raise ValueError(f"Argument {name} should be positive, got {value}.")
    if sampler not in SAMPLERS:
        raise ValueError(f"Argument sampler should be one of {SAMPLERS}, got {sampler!r}.")
    if pruner not in PRUNERS:
        raise ValueError(f"Argument pruner should be one of {PRUNERS}, got {pruner!r}.")
    if direction is None:
        return "minimize" if metric_direction(metric) == "min" else "maximize"
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"Argument direction should be 'minimize', 'maximize' or None, got {direction!r}.")
    return direction


def _worker(options: dict[str, Any]) -> int:
    """One worker: open the study, run trials until it has its target."""
    study, storage, lock = create_study(options["storage"], options["study_name"], options["direction"])
    study.pruner = make_pruner(
        options["pruner"],
        options["pruner_startup_trials"],
        options["pruner_warmup_epochs"],
        repeats=len(options["repeats"]),
    )
    seed = options["seed"]
    objective = partial(
        run_trial,
        build=options["build"],
        metric=options["metric"],
        repeats=options["repeats"],
        seed=seed or 0,
        aggregate=options["aggregate"],
        q=options["q"],
        direction=options["direction"],
        storage=options["storage"],
        warmup_epochs=options["pruner_warmup_epochs"],
    )
    return run_worker(
        study,
        storage,
        lock,
        lambda trial: objective(trial),
        target=options["trials"],
        sampler_for=lambda n: make_sampler(options["sampler"], None if seed is None else seed + n),
        label=options["metric"],
        failures_where=f"the study's report ({options['report_dir']})" if options["report_dir"] else "the study",
    )


def _spawned(options: dict[str, Any]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("ignite").setLevel(logging.WARNING)
    _worker(options)


def search(
    build: Callable[[Any], TrialRun],
    *,
    storage: str,
    study_name: str = "search",
    trials: int = 20,
    metric: str = "mse",
    direction: str | None = None,
    sampler: str = "tpe",
    seed: int | None = 0,
    pruner: str = "median",
    pruner_startup_trials: int = 5,
    pruner_warmup_epochs: int = 0,
    repeats: int | Sequence[Variant | dict[str, Any]] = 1,
    aggregate: str = "mean",
    q: float = 0.5,
    workers: int = 1,
    report_dir: str | Path | None = None,
) -> Any:
    """Search the parameters ``build`` draws, until the study has ``trials`` finished (complete or pruned) trials.

    Args:
        build: ``trial -> TrialRun``: the trial's trainer and validation evaluator (with ``metric``
            attached), data and epochs, made from ``trial.suggest_*`` values.
        storage: the study's storage: ``sqlite:///PATH``, another database URL (``postgresql://...``
            needs the ``postgres`` extra) or ``journal:PATH``. Workers meet there; a study continues
            there when the search runs again.
        study_name: the study's name in the storage.
        trials: the finished trials the study wants (all workers together).
        metric: the validation metric to optimise (``evaluator.state.metrics[metric]``).
        direction: ``"minimize"``/``"maximize"``; None: from ``metric_direction(metric)``.
        sampler: ``"tpe"`` or ``"random"``, seeded by ``seed`` plus the trials so far (None: unseeded).
        seed: also torch's seed before each build (plus the repeat's index).
        pruner: ``"median"``, ``"successive_halving"`` or ``"none"``.
        pruner_startup_trials, pruner_warmup_epochs: the median pruner's trials before it prunes,
            and the epochs of a trial that are never pruned.
        repeats: trainings per trial: an int R (torch seeded ``seed + r``), or a list of variants,
            dicts with ``seed``, ``threads`` (``torch.set_num_threads``, restored after) and ``isa``
            (``"native"``, or ``"avx2"``: a child process with ``IGNITE_LSTM_ISA=avx2`` and
            ``MKL_ENABLE_INSTRUCTIONS=AVX2``; ``build`` must then be picklable), e.g.
            ``variant_grid(seeds=[0, 1], threads=[1, 2])``. Each repeat's value and variant are in the
            trial's user attribute ``repeats``; after each epoch the aggregate of the repeats so far is
            reported (step ``r * max_epochs + epoch``), so a repeat that goes badly is pruned.
        aggregate: the trial's value from its repeats: ``"worst"`` (max of a minimised metric,
            min of a maximised one), ``"mean"`` or ``"quantile"``.
        q: ``"quantile"``'s quantile, from the best repeat (0) to the worst (1).
        workers: processes working on the study together (``build`` picklable when > 1).
        report_dir: where ``summary.md``, ``summary.json`` and figures are written; None: no report.

    Returns:
        The Optuna study (``study.best_trial``, ``study.trials``).

    Example:
        >>> def build(trial):
        ...     model = MyGRU(hidden=trial.suggest_int("hidden", 8, 64))
        ...     opt = torch.optim.Adam(model.parameters(), lr=trial.suggest_float("lr", 1e-4, 1e-2, log=True))
        ...     return TrialRun(create_trainer(model, opt, nn.MSELoss()), create_evaluator(model, metrics),
        ...                     train_loader, max_epochs=20, val_data=val_loader)
        >>> study = search(build, storage="sqlite:///study.db", trials=40, metric="mse", workers=2)
    """
    direction = _check(trials, workers, sampler, pruner, metric, direction)
    repeats = resolve_repeats(repeats, seed)  # refused here, before any worker starts
    check_aggregate(aggregate, q)
    options = {
        "build": build,
        "storage": storage,
        "study_name": study_name,
        "trials": trials,
        "metric": metric,
        "direction": direction,
        "sampler": sampler,
        "seed": seed,
        "pruner": pruner,
        "pruner_startup_trials": pruner_startup_trials,
        "pruner_warmup_epochs": pruner_warmup_epochs,
        "repeats": repeats,
        "aggregate": aggregate,
        "q": q,
        "report_dir": None if report_dir is None else str(report_dir),
    }
    study, _, _ = create_study(storage, study_name, direction)  # refused here, before any worker starts
    if workers == 1:
        _worker(options)
    else:
        context = multiprocessing.get_context("spawn")
        procs = [context.Process(target=_spawned, args=(options,), name=f"search-worker-{i}") for i in range(workers)]
        for p in procs:
            p.start()
        try:
            for p in procs:
                p.join()
        except KeyboardInterrupt:  # the terminal's Ctrl-C reached the workers too: each fails its trial
            for p in procs:
                p.join()
            raise
        failed = [p.exitcode for p in procs if p.exitcode]
        if failed:
            raise RuntimeError(f"{len(failed)} of the {workers} search workers failed (exit codes {failed}).")
    study, _, _ = create_study(storage, study_name, direction)
    if report_dir is not None:
        from ignite_lstm.search.report import write_report

        write_report(study, report_dir, label=metric, storage=shown_url(storage), target=trials)
    return study
