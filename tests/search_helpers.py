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
