"""The command line: ``ignite-lstm train|evaluate|extract|export|tune|config|serve|matrix|check``; ``python run.py CONFIG``.

Training (``main``): ``python run.py CONFIG [key=value ...]`` = ``ignite-lstm train CONFIG ...``.

parse -> ``load_config`` -> ``preflight`` -> ``rundir.prepare_run`` -> ``launch.launch``
(``idist.Parallel`` running ``training.run`` on every rank) -> the run's ``Outcome`` ->
exit status: 0 done, 1 the disk filled up (or another unexpected error), 2 bad input
(config, data file, output folder, checkpoint, a setting this machine cannot run),
3 training diverged (NaN/inf loss), 130 interrupted by Ctrl-C and 143 by SIGTERM (a
checkpoint was saved; also 130 and 143 when a second signal aborted the run at once,
without one).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ignite_lstm.app.config.schema import ConfigError, load_config
from ignite_lstm.app.run.launch import launch, setup_logging
from ignite_lstm.app.run.preflight import preflight
from ignite_lstm.app.run.rundir import NothingToDo, RunDirError, discard_unused_run_dir, prepare_run
from ignite_lstm.app.run.training import Outcome
from ignite_lstm.app.task.dataset import batch_problem
from ignite_lstm.app.task.h5io import DataFileError
from ignite_lstm.checkpoint.files import CheckpointMismatch

__all__ = ["main", "main_exit", "dispatch", "SUBCOMMANDS"]


def _check_world(cfg: Any, world: int, torchrun: bool) -> None:
    """Settings that depend on the number of processes, checked before anything is written."""
    problems = []
    if torchrun and world > 1 and not cfg.distributed.backend:
        problems.append(
            f"distributed.backend: null cannot join torchrun's {world} processes (each would train "
            f"alone); set gloo (CPU) or nccl (GPU)"
        )
    if problem := batch_problem(cfg.train.batch_size, world):
        problems.append(problem)
    if problems:
        raise ConfigError(problems)


def _summary(outcome: Outcome, frequencies: Sequence[float]) -> str:
    """The final metrics table that ends a finished run's output."""
    metrics = outcome.metrics
    rows = ["mse"] + [f"mse_f{f:g}" for f in frequencies] + ["rmse", "mae", "corr", "r2", "snr"]
    lines = [
        f"Run folder: {outcome.run_dir}",
        f"Epochs: {outcome.epochs}, mean epoch time {outcome.epoch_seconds:.2f} s",
        f"{'metric':<10}{'train':>12}{'val':>12}{'test':>12}",
    ]
    for row in rows:
        cells = [metrics.get(f"{split}/{row}") for split in ("train", "val", "test")]
        lines.append(f"{row:<10}" + "".join(f"{c:>12.5f}" if c is not None else f"{'-':>12}" for c in cells))
    return "\n".join(lines)


def _report(outcome: Outcome, args: argparse.Namespace, frequencies: Sequence[float]) -> int:
    """Print how the run ended (the summary table, the resume line, or the error) and return the exit status."""
    if outcome.status == "done":
        if int(os.environ.get("RANK", 0)) == 0:
            print(_summary(outcome, frequencies))
    elif outcome.status == "nothing":  # resume=auto of a finished run under torchrun
        if int(os.environ.get("RANK", 0)) == 0:
            print(outcome.message)
    elif outcome.status == "interrupted":
        kept = [a for a in args.overrides if not a.startswith("resume=")]
        hint = " ".join(shlex.quote(a) for a in [sys.argv[0], args.config, *kept, f"resume={outcome.checkpoint}"])
        print(
            f"{outcome.message}; checkpoint saved to {outcome.checkpoint}. Resume with: python {hint}", file=sys.stderr
        )
    else:
        print(f"error: {outcome.message}", file=sys.stderr)
    return outcome.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="ignite-lstm",
        description="Train a stateful L = 1 LSTM on the signal-extraction task.",
        epilog="Example: python run.py configs/base.yaml train.epochs=20 resume=auto",
    )
    parser.add_argument("config", help="YAML config file, e.g. configs/base.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.lr=1e-3")
    args = parser.parse_args(argv)
    torchrun = "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)
    setup_logging(int(os.environ.get("RANK", 0)))
    plan = None
    try:
        cfg = load_config(args.config, args.overrides)
        preflight(cfg)  # device, handlers.extra, data.dir, memory: before anything is written
        d = cfg.distributed
        nproc = d.nproc_per_node if (d.backend and not torchrun) else None
        _check_world(cfg, int(os.environ.get("WORLD_SIZE", 1)) if torchrun else nproc or 1, torchrun)
        plan = None if torchrun else prepare_run(cfg, Path(args.config).stem)
        try:
            outcome = launch(cfg, Path(args.config).stem, plan, nproc)
        except BaseException:  # a start-up that failed leaves nothing that blocks the same command
            discard_unused_run_dir(plan)
            raise
    except NothingToDo as exc:  # resume=auto of a finished run: a preemption loop that re-runs the command ends
        print(str(exc))
        return 0
    except (ConfigError, RunDirError, DataFileError, CheckpointMismatch) as exc:
        discard_unused_run_dir(plan)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # a second Ctrl-C or SIGTERM, or one outside the training loop
        print(f"error: aborted by {str(exc) or 'Ctrl-C'}", file=sys.stderr)
        return 128 + getattr(exc, "signum", signal.SIGINT)
    if outcome.status != "done":
        discard_unused_run_dir(plan)  # only a folder that holds nothing of a started run
    return _report(outcome, args, cfg.data.frequencies)


# ``ignite-lstm NAME ...`` runs ``main(argv, prog=...)`` of the module: one line per subcommand.
SUBCOMMANDS = {
    "evaluate": "ignite_lstm.app.run.evaluate",
    "extract": "ignite_lstm.app.run.extract",
    "export": "ignite_lstm.app.export",
    "tune": "ignite_lstm.app.tune.study",
    "config": "ignite_lstm.app.config.command",
    "serve": "ignite_lstm.app.serve",
    "matrix": "ignite_lstm.app.matrix",
    "check": "ignite_lstm.app.check",
}
_USAGE = """usage: ignite-lstm {train,evaluate,extract,export,tune,config,serve,matrix,check} ...

  train CONFIG [key=value ...]     train a model (also: ignite-lstm CONFIG ..., python run.py CONFIG ...)
  evaluate RUN_OR_CHECKPOINT       metrics and figures of a trained model on a split
  extract --checkpoint PATH ...    run a trained filter over a mixture, one sample at a time
  export RUN_OR_CHECKPOINT         write the step model as ONNX
  tune STUDY.yaml [key=value ...]  hyperparameter search with Optuna
  config [CONFIG] [--markdown]     print a config resolved against the schema
  serve MODEL                      serve a trained filter to live streams over HTTP and WebSocket
  matrix CONFIG --seeds S.. ...    train seeds x threads (x isa), each its own run: a recipe's spread
  check CONFIG [key=value ...]     does a recipe hold on this machine: 1 and 2 threads side by side

Run ignite-lstm COMMAND --help for a command's options."""


def dispatch(argv: Sequence[str]) -> int:
    """Run ``ignite-lstm ARGV``: a subcommand, or training (``train CONFIG`` or just ``CONFIG``).

    Args:
        argv: the arguments after the program name.

    Returns:
        The exit status.
    """
    if not argv or argv[0] in ("-h", "--help"):
        print(_USAGE)
        return 0 if argv else 2
    if argv[0] == "train":
        return main(argv[1:])
    if argv[0] in SUBCOMMANDS:
        import importlib

        module = importlib.import_module(SUBCOMMANDS[argv[0]])
        return module.main(list(argv[1:]), prog=f"ignite-lstm {argv[0]}")
    return main(argv)


def main_exit() -> None:
    """Console-script entry point of ``ignite-lstm`` (see ``dispatch``)."""
    sys.exit(dispatch(sys.argv[1:]))


if __name__ == "__main__":
    main_exit()
