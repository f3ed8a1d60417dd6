"""A user's own model and ``build(trial)`` for the search tests, at module level so that spawned workers can
import them (``functools.partial`` binds the test's settings)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import torch
import torch.nn as nn
from ignite.engine import Events
from ignite.metrics import MeanSquaredError

from ignite_lstm.engine.factories import create_evaluator, create_trainer
from ignite_lstm.search.objective import TrialRun


class TinyGRU(nn.Module):
    """Not a model of the package: x (B, T, 1) -> y (B, T, 1), state (1, B, H)."""

    state_batch_dim = 1

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.gru, self.head = nn.GRU(1, hidden, batch_first=True), nn.Linear(hidden, 1)

    def forward(self, x, state=None):
        out, state = self.gru(x, state)
        return self.head(out), state


def _data(seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 20, 1, generator=g)
    return [(x, torch.cumsum(x, dim=1) * 0.1)]


def build(trial, *, epochs: int = 2, barrier: str | None = None, workers: int = 2, script: tuple = ()) -> TrialRun:
    """The trial's GRU, trainer and evaluator; ``script``: the validation mse of trial n (for pruning);
    ``barrier``: a folder where each worker's first trial waits until ``workers`` workers have one running."""
    hidden = trial.suggest_int("hidden", 2, 8)
    lr = trial.suggest_float("lr", 1e-3, 1e-1, log=True)
    model = TinyGRU(hidden)
    trainer = create_trainer(model, torch.optim.SGD(model.parameters(), lr=lr), nn.MSELoss(), tbptt_steps=10)
    evaluator = create_evaluator(model, {"mse": MeanSquaredError(lambda o: (o["y_pred"], o["y"]))})
    if script:
        value = script[trial.number]
        evaluator.add_event_handler(Events.COMPLETED, lambda e: e.state.metrics.__setitem__("mse", value))
    if barrier is not None:
        folder = Path(barrier)

        @trainer.on(Events.ITERATION_COMPLETED(once=1))
        def _meet(_):
            folder.mkdir(parents=True, exist_ok=True)
            (folder / str(os.getpid())).touch()
            deadline = time.monotonic() + 300
            while len(list(folder.iterdir())) < workers:
                if time.monotonic() > deadline:
                    os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(0.01)

    return TrialRun(trainer, evaluator, _data(0), max_epochs=epochs, val_data=_data(1))


def interrupted_once(trial, *, flag: str) -> TrialRun:
    """``build`` whose first trial is stopped by Ctrl-C in its first iteration (``flag``: a file, made then)."""
    run = build(trial, epochs=1)
    if not Path(flag).exists():

        @run.trainer.on(Events.ITERATION_COMPLETED(once=1))
        def _ctrl_c(_):
            Path(flag).touch()
            raise KeyboardInterrupt

    return run


def scripted_repeats(trial, *, curves: dict, epochs: int = 2) -> TrialRun:
    """``build`` whose validation mse at epoch e is ``curves[(trial.number, seed)][e - 1]``, the seed being the
    repeat's (``torch.initial_seed()``: the search seeds torch before each build)."""
    run = build(trial, epochs=epochs)
    curve = curves[(trial.number, torch.initial_seed())]
    run.evaluator.add_event_handler(
        Events.COMPLETED, lambda e: e.state.metrics.__setitem__("mse", curve[run.trainer.state.epoch - 1])
    )
    return run


def recording_environment(trial) -> TrialRun:
    """``build`` that records, in the trial's user attribute ``env s<seed>``, the process's instruction-set
    variables, torch threads and the native kernel's ``describe()``."""
    from ignite_lstm.models.native import describe

    trial.set_user_attr(
        f"env s{torch.initial_seed()}",
        {
            "pid": os.getpid(),
            "IGNITE_LSTM_ISA": os.environ.get("IGNITE_LSTM_ISA"),
            "MKL_ENABLE_INSTRUCTIONS": os.environ.get("MKL_ENABLE_INSTRUCTIONS"),
            "threads": torch.get_num_threads(),
            "kernel": describe(),
        },
    )
    return build(trial, epochs=1)


def counted_and_held(trial, *, log: str, marker: str, release: str) -> TrialRun:
    """``build`` that appends ``<trial> s<seed>`` to ``log`` at every training; a repeat of seed 1 waits in its
    first iteration (after writing ``marker``) until ``release`` exists."""
    seed = torch.initial_seed()
    with open(log, "a") as f:
        f.write(f"{trial.number} s{seed}\n")
    run = build(trial, epochs=1)
    if seed == 1 and not Path(release).exists():

        @run.trainer.on(Events.ITERATION_COMPLETED(once=1))
        def _hold(_):
            Path(marker).touch()
            deadline = time.monotonic() + 300
            while not Path(release).exists():
                if time.monotonic() > deadline:
                    os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(0.01)

    return run
