"""``handlers.extra`` entries for the tune tests, driven by environment variables (they act in
the tune workers' subprocesses as well as in-process), each at one exact point of a trial.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events


def _wait(condition: Any) -> None:
    deadline = time.monotonic() + 300  # never outlive a test that has failed
    while not condition():
        if time.monotonic() > deadline:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.01)


def barrier(trainer: Engine, evaluator: Engine, config: Any) -> None:
    """After a trial's first iteration: mark ``$BARRIER_DIR/<pid>``, wait until ``$BARRIER_N`` workers have.

    Every worker then has a trial running at the same time; later trials pass at once.
    """
    folder, n = Path(os.environ["BARRIER_DIR"]), int(os.environ["BARRIER_N"])

    @trainer.on(Events.ITERATION_COMPLETED(once=1))
    def _meet(_: Engine) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / str(os.getpid())).write_text(config.name)
        _wait(lambda: len(list(folder.iterdir())) >= n)


def hold(trainer: Engine, evaluator: Engine, config: Any) -> None:
    """After a trial's first iteration: write ``$HOLD_MARKER`` (the trial's name), wait for ``$HOLD_RELEASE``."""
    marker, release = Path(os.environ["HOLD_MARKER"]), Path(os.environ["HOLD_RELEASE"])

    @trainer.on(Events.ITERATION_COMPLETED(once=1))
    def _hold(_: Engine) -> None:
        partial = marker.with_name(marker.name + ".partial")
        partial.write_text(config.name)
        os.replace(partial, marker)  # whole when it appears: a test may kill this process right then
        _wait(release.exists)


def scripted_by_trial(trainer: Engine, evaluator: Engine, config: Any) -> None:
    """The validation metric of trial n at every epoch: ``$TUNE_SCRIPT="mse:0.1,0.9"`` gives trial 1 0.9.

    The trial's number is read from its run folder's name (``trial-0001``).
    """
    name, _, values = os.environ["TUNE_SCRIPT"].partition(":")
    value = [float(v) for v in values.split(",")][int(config.name.rsplit("-", 1)[1])]

    @evaluator.on(Events.EPOCH_COMPLETED)
    def _override(engine: Engine) -> None:
        engine.state.metrics[name] = value
