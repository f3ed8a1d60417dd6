"""Hyperparameter search with Optuna: ``ignite-lstm tune STUDY.yaml [key=value ...]``.

Also ``ignite-lstm tune ...``. The study file is a config with a ``tune:`` section
(``ignite_lstm.app.tune.settings``). Each trial is a real run of ``training.run`` per repeat
(``ignite_lstm.app.tune.trial``), in its own run folder, ``<output_dir>/<study>/trials/trial-NNNN``,
pruned on the validation evaluator's metric (the aggregate of the repeats so far); its value is
the final ``val/<metric>`` (the aggregate of the repeats'). Workers share the study
through its storage (an SQLite file in the study folder by default): start the command
several times, or once with ``--workers N``; together they stop at ``tune.trials`` finished
(complete or pruned) trials. A trial whose worker died is marked failed by the next worker
that looks (same machine: at once; other machines: after the heartbeat's grace period).

Exit status: 0 done, 1 ``tune.trials`` trials in a row failed, 2 bad input (study
file, storage, data file), 130 Ctrl-C (the running trial is marked failed; run the same
command again to continue the study).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import subprocess
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ignite_lstm.app.config.schema import ConfigError
from ignite_lstm.app.run.rundir import RunDirError
from ignite_lstm.app.task.h5io import DataFileError
from ignite_lstm.app.tune.settings import TuneSettings, load_study, target_trials
from ignite_lstm.app.tune.storage import (
    StudyError,
    open_study,
    shown_url,
    storage_url,
)
from ignite_lstm.app.tune.trial import TrialDiverged, train_trial
from ignite_lstm.checkpoint.files import CheckpointMismatch
from ignite_lstm.search.worker import StudyFailed, make_pruner
from ignite_lstm.search.worker import run_worker as search_worker

__all__ = ["main", "run_worker", "StudyFailed", "TrialDiverged"]

logger = logging.getLogger("ignite_lstm.app.tune.study")


def _sampler(settings: TuneSettings, seed: int | None) -> Any:
    import optuna

    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if settings.sampler == "grid":
        return optuna.samplers.GridSampler({d.key: d.grid() for d in settings.space}, seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _pruner(settings: TuneSettings) -> Any:
    return make_pruner(
        settings.pruner, settings.pruner_startup_trials, settings.pruner_warmup_epochs, repeats=len(settings.repeats)
    )


def run_worker(cfg: Any, settings: TuneSettings, study: Any, storage: Any, lock: Path | None) -> int:
    """Run trials until the study has ``tune.trials`` finished (complete or pruned) ones (the library's loop).

    Returns:
        The number of trials this worker ran.

    Raises:
        StudyFailed: ``tune.trials`` trials of this worker failed in a row.
        KeyboardInterrupt: Ctrl-C (the trial is marked failed).
    """
    study_dir = Path(cfg.output_dir) / settings.study_name
    study.pruner, study.sampler = _pruner(settings), _sampler(settings, settings.seed)

    def sampler_for(trials: int) -> Any:
        if settings.sampler == "grid":  # the grid's order is the seed's: one sampler for all trials
            return study.sampler
        return _sampler(settings, None if settings.seed is None else settings.seed + trials)

    return search_worker(
        study,
        storage,
        lock,
        lambda trial: train_trial(trial, cfg, settings, study_dir),
        target=target_trials(settings),
        sampler_for=sampler_for,
        bad_point=(TrialDiverged, ConfigError),
        label=f"val/{settings.metric}",
        failures_where=str(study_dir / "summary.md"),
    )


class _ConsoleFilter(logging.Filter):
    """The console shows the study's progress and warnings; each trial's full log is in its train.log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("ignite.engine") and "terminating due to exception" in record.getMessage():
            return False  # a pruned trial ends by an exception; the progress line reports it
        return record.name.startswith(("ignite_lstm.app.tune.study", "ignite_lstm.search")) or (
            record.levelno >= logging.WARNING
        )


def _setup_logging() -> None:
    import optuna

    root = logging.getLogger()
    root.setLevel(logging.INFO)
    logging.getLogger("ignite").setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    if not any(getattr(h, "_ignite_lstm_tune", False) for h in root.handlers):
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        stream.addFilter(_ConsoleFilter())
        stream._ignite_lstm_tune = True  # type: ignore[attr-defined]
        root.addHandler(stream)


def _spawn_workers(args: argparse.Namespace) -> int:
    """``--workers N``: N worker processes of this command; the exit status of the first that failed."""
    command = [sys.executable, "-m", "ignite_lstm.app.tune.study", args.config, *args.overrides, "--no-outputs"]
    procs = [subprocess.Popen(command) for _ in range(args.workers)]
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:  # the terminal's Ctrl-C reached the workers too: each marks its trial failed
        codes = [p.wait() for p in procs]
        return 130
    return next((c for c in codes if c), 0)


def main(argv: Sequence[str] | None = None, prog: str = "ignite-lstm tune") -> int:
    """Run the tune command; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Hyperparameter search with Optuna over a study file's tune: section.",
        epilog="Example: ignite-lstm tune configs/tune-quick.yaml tune.trials=4 --workers 2",
    )
    parser.add_argument("config", help="study file: a config with a tune: section, e.g. configs/tune-quick.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. tune.trials=4")
    parser.add_argument("--workers", type=int, default=1, help="worker processes to start on this machine (1)")
    parser.add_argument(
        "--report",
        action="store_true",
        help="only write the study's summary, figures and best config as they stand; run no trial",
    )
    parser.add_argument("--no-outputs", action="store_true", help=argparse.SUPPRESS)  # --workers' children
    args = parser.parse_intermixed_args(argv)
    try:
        import optuna  # noqa: F401 (the extra is installed)
        import optuna_integration  # noqa: F401
    except ImportError as exc:
        print(
            f"error: the tune command needs the [tune] extra ({exc}): pip install 'ignite_lstm[tune]'", file=sys.stderr
        )
        return 1
    _setup_logging()

    code, study = 0, None
    try:
        if args.workers < 1:
            raise ConfigError([f"--workers: {args.workers} is out of range: must be >= 1"])
        cfg, settings = load_study(args.config, args.overrides)
        study, storage, lock = open_study(cfg, settings)
        study_dir = Path(cfg.output_dir) / settings.study_name
        logger.info(
            "Study %r in %s: %d of %d trials finished",
            settings.study_name,
            shown_url(storage_url(settings, study_dir)),
            _finished(study),
            target_trials(settings),
        )
        if args.workers > 1 and not args.report:
            code = _spawn_workers(args)
        elif not args.report:
            run_worker(cfg, settings, study, storage, lock)
    except (ConfigError, StudyError, RunDirError, DataFileError, CheckpointMismatch) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StudyFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print(
            f"error: interrupted; the running trial is marked failed. Continue the study with the same command: "
            f"ignite-lstm tune {shlex.join([args.config, *args.overrides])}",
            file=sys.stderr,
        )
        code = 130
    if study is not None and not args.no_outputs:
        from ignite_lstm.app.tune.report import write_outputs

        files = write_outputs(study, settings, study_dir, cfg.output_dir, shown_url(storage_url(settings, study_dir)))
        print("\n".join(f"{what}: {path}" for what, path in files.items()))
    return code


def _finished(study: Any) -> int:
    from optuna.trial import TrialState

    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.get_trials(deepcopy=False))


if __name__ == "__main__":
    sys.exit(main())
