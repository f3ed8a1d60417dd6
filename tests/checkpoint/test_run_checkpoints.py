"""One-call resume from plain Python: ``attach_checkpoints(...).resume(path, loader)``, with real files.

Each "run" builds its objects anew, as a new process would (with another seed, so that
nothing the resumed run computes comes from its own start), attaches the checkpoints
to a real folder and trains; a stopped run is continued with one call and compared
with the same run left alone: the losses of every iteration, the validation scores,
the weights, the best file and the files left in the folder.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from torch.utils.data import DataLoader

from ignite_lstm import StatefulLSTM, attach_checkpoints, create_evaluator, create_trainer
from ignite_lstm.app.task.dataset import SignalDataset
from ignite_lstm.app.task.generator import generate_split
from ignite_lstm.app.task.metrics import build_metrics
from ignite_lstm.checkpoint.files import CheckpointMismatch, read_checkpoint
from ignite_lstm.checkpoint.resume import SkipBatches, resume_from_checkpoint

EPOCHS, PER_EPOCH = 4, 3  # 6 sequences in batches of 2
TASK = dict(
    frequencies=[1.0, 3.0], fs=1000.0, duration=0.2, amplitude_range=(0.8, 1.2), phase_scale=0.01, noise_sigma=0.1
)


class _Stop(Exception):
    """Raised by a handler: the process dies there (as by SIGKILL), its files stay as they are."""


@dataclass
class _Run:
    trainer: Engine
    model: nn.Module
    checkpoints: Any
    data: Any
    losses: list[float] = field(default_factory=list)
    val: list[float] = field(default_factory=list)


def _build(
    folder: Path, *, seed: int = 0, scores: list[float] | None = None, enabled: bool = True, hidden_size: int = 8
) -> _Run:
    """A StatefulLSTM with dropout on a shuffling DataLoader, validated every epoch (before the checkpoints
    are attached, as they must be to save the epoch's score); ``scores`` replace the validation MSE."""
    torch.manual_seed(seed)
    train, val = generate_split(**TASK, n_mixtures=3, seed=1), generate_split(**TASK, n_mixtures=1, seed=3)
    loader = DataLoader(SignalDataset(train.mixture, train.target, input_scale=4.0), batch_size=2, shuffle=True)
    val_loader = DataLoader(SignalDataset(val.mixture, val.target, input_scale=4.0), batch_size=2)
    model = StatefulLSTM(input_size=3, hidden_size=hidden_size, num_layers=2, dropout=0.3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    trainer = create_trainer(model, optimizer, nn.MSELoss(), tbptt_steps=50, update="window")
    evaluator = create_evaluator(model, build_metrics(names=("mse",)))
    if scores is not None:
        evaluator.add_event_handler(
            Events.EPOCH_COMPLETED, lambda e: e.state.metrics.__setitem__("mse", scores[trainer.state.epoch - 1])
        )
    run = _Run(trainer, model, None, loader)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: run.losses.append(e.state.output["loss"]))
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED, lambda _: run.val.append(evaluator.run(val_loader).metrics["mse"])
    )
    run.checkpoints = attach_checkpoints(
        trainer,
        evaluator,
        {"model": model, "optimizer": optimizer, "trainer": trainer},
        {"model": model},
        folder,
        n_saved=1,
        every=2,
        enabled=enabled,
    )
    return run


def _train(run: _Run, data: Any = None, *, stop_at: int = 0, kill_at: int = 0) -> _Run:
    """Train to EPOCHS; ``stop_at``: stop there as Ctrl-C does (the interrupted file saved); ``kill_at``: die there."""
    if stop_at:
        run.trainer.add_event_handler(Events.ITERATION_COMPLETED(once=stop_at), lambda e: e.terminate())
    if kill_at:

        @run.trainer.on(Events.ITERATION_COMPLETED(once=kill_at))
        def _die(_: Engine) -> None:
            raise _Stop

    try:
        run.trainer.run(run.data if data is None else data, max_epochs=EPOCHS)
    except _Stop:
        return run
    if stop_at:
        run.checkpoints["interrupted"](run.trainer)
    return run


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_run_stopped_mid_epoch_resumes_with_one_call_to_the_run_left_alone(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ignite_lstm")
    alone = _train(_build(tmp_path / "alone"))
    stop_at = 2 * PER_EPOCH + 2  # 2 of the 3 batches of epoch 3 trained
    stopped = _train(_build(tmp_path / "stopped"), stop_at=stop_at)
    assert stopped.losses == alone.losses[:stop_at]
    path = stopped.checkpoints.latest()
    assert path.name == f"interrupted_checkpoint_{stop_at}.pt"

    resumed = _build(tmp_path / "stopped", seed=123)  # a new process
    data = resumed.checkpoints.resume(path, resumed.data)
    assert isinstance(data, SkipBatches) and data.loader is resumed.data
    _train(resumed, data)

    # the same shuffled order and dropout masks: the same loss at every remaining iteration
    assert resumed.losses == alone.losses[stop_at:]
    assert resumed.val == alone.val[2:] and _same_weights(resumed.model, alone.model)
    best, best_alone = resumed.checkpoints["best"].last_checkpoint, alone.checkpoints["best"].last_checkpoint
    assert best.name == best_alone.name
    assert _same_weights(_loaded(best), _loaded(best_alone))
    # the files the run left alone keeps, no stale ones: the interrupted file it resumed from is gone
    # once the resumed run saved past it (issue 26: it stayed behind), and the log says so
    assert _files(tmp_path / "stopped") == _files(tmp_path / "alone")
    assert f"Removed {path.name}: the resumed run has saved past it." in caplog.text


def _loaded(path: Path) -> nn.Module:
    model = StatefulLSTM(input_size=3, hidden_size=8, num_layers=2, dropout=0.3)
    model.load_state_dict(torch.load(path, weights_only=True)["model"])
    return model


def test_a_killed_run_resumed_keeps_the_true_best_and_removes_what_the_run_left_alone_removes(tmp_path):
    """The best validation is at epoch 2, before the kill: without the savers' lists the resumed run
    would take epoch 3 (worse) as its best and leave the first run's best, last and epoch files behind."""
    scores = [0.5, 0.2, 0.4, 0.3]
    alone = _train(_build(tmp_path / "alone", scores=scores))
    killed = _train(_build(tmp_path / "killed", scores=scores), kill_at=2 * PER_EPOCH + 1)
    assert killed.checkpoints.latest().name == f"last_checkpoint_{2 * PER_EPOCH}.pt"

    resumed = _build(tmp_path / "killed", seed=123, scores=scores)
    _train(resumed, resumed.checkpoints.resume(resumed.checkpoints.latest(), resumed.data))

    best = resumed.checkpoints["best"].last_checkpoint
    assert best.name == f"best_checkpoint_{2 * PER_EPOCH}_neg_val_mse=-0.2000.pt"
    assert best.name == alone.checkpoints["best"].last_checkpoint.name
    assert (
        _files(tmp_path / "killed")
        == _files(tmp_path / "alone")
        == sorted([best.name, f"epoch_checkpoint_{4 * PER_EPOCH}.pt", f"last_checkpoint_{4 * PER_EPOCH}.pt"])
    )
    assert _same_weights(_loaded(best), _loaded(alone.checkpoints["best"].last_checkpoint))
    assert resumed.losses == alone.losses[2 * PER_EPOCH :] and _same_weights(resumed.model, alone.model)


def test_a_saver_the_checkpointed_run_did_not_have_starts_with_no_files(tmp_path):
    """A run without best/last files (``enabled=False``) stopped and resumed with them: the new best
    saver does not take the interrupted file for one of its own (it would never save a best)."""
    stopped = _train(_build(tmp_path, enabled=False), stop_at=PER_EPOCH + 1)
    assert _files(tmp_path) == [f"interrupted_checkpoint_{PER_EPOCH + 1}.pt"]
    resumed = _build(tmp_path, seed=123, scores=[0.5, 0.4, 0.3, 0.2])
    _train(resumed, resumed.checkpoints.resume(stopped.checkpoints.latest(), resumed.data))
    assert resumed.checkpoints["best"].last_checkpoint.name == f"best_checkpoint_{4 * PER_EPOCH}_neg_val_mse=-0.2000.pt"


class _GRU(nn.Module):
    """A model of one's own (no ``config``, so no ``model_args``): x (B, T, 2) -> y (B, T, 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.gru, self.head = nn.GRU(2, 4, batch_first=True), nn.Linear(4, 1)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        out, state = self.gru(x, state)
        return self.head(out), state


class _PositionedLoader:
    """Batches in a fixed order that knows where it stands in its epoch (``state_dict``), as a stream
    loader does: restored, it continues from there."""

    def __init__(self, batches: list) -> None:
        self.batches, self.position = batches, 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        start, self.position = (self.position if self.position < len(self) else 0), 0
        for i in range(start, len(self)):
            self.position = i + 1
            yield self.batches[i]

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]


def _stream_run(folder: Path, seed: int) -> tuple[Engine, _PositionedLoader, Any, list[float]]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(7)
    loader = _PositionedLoader(
        [(torch.randn(2, 20, 2, generator=gen), torch.randn(2, 20, 1, generator=gen)) for _ in range(PER_EPOCH)]
    )
    model = _GRU()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = create_trainer(model, optimizer, nn.MSELoss(), tbptt_steps=10)
    losses: list[float] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"]))
    checkpoints = attach_checkpoints(
        trainer,
        Engine(lambda e, b: None),
        {"model": model, "optimizer": optimizer, "trainer": trainer, "loader": loader},
        {"model": model},
        folder,
        enabled=False,
    )
    return trainer, loader, checkpoints, losses


def test_a_loader_that_restores_its_own_position_continues_from_there_and_is_not_skipped(tmp_path):
    trainer, loader, _, alone = _stream_run(tmp_path / "alone", 0)
    trainer.run(loader, max_epochs=EPOCHS)
    trainer, loader, checkpoints, stopped = _stream_run(tmp_path / "stopped", 0)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=PER_EPOCH + 1), lambda e: e.terminate())
    trainer.run(loader, max_epochs=EPOCHS)
    checkpoints["interrupted"](trainer)

    trainer, loader, checkpoints, resumed = _stream_run(tmp_path / "stopped", 123)
    data = checkpoints.resume(checkpoints.latest(), loader)
    assert data is loader and loader.position == 1
    trainer.run(data, max_epochs=EPOCHS)
    assert stopped + resumed == alone


def test_resume_refuses_what_it_cannot_continue_from_and_says_why(tmp_path):
    run = _train(_build(tmp_path / "run", scores=[0.5, 0.4, 0.3, 0.2]), kill_at=PER_EPOCH + 1)
    folder = tmp_path / "run"
    before = _files(folder)
    fresh = _build(folder, seed=1)
    missing = folder / "missing.pt"
    with pytest.raises(CheckpointMismatch, match=re.escape(f"Checkpoint {missing} could not be read: No such file")):
        fresh.checkpoints.resume(missing, fresh.data)
    best = run.checkpoints["best"].last_checkpoint
    with pytest.raises(
        CheckpointMismatch,
        match=re.escape(
            f"Checkpoint {best} is not a training checkpoint (no optimizer, trainer); resume from a last_*"
        ),
    ):
        fresh.checkpoints.resume(best, fresh.data)
    last = torch.load(run.checkpoints.latest(), weights_only=True)
    del last["optimizer"]
    with pytest.raises(CheckpointMismatch, match=r"^Checkpoint mine\.pt is not a training checkpoint \(no optimizer\)"):
        fresh.checkpoints.resume(last, fresh.data, source="mine.pt")
    wider = _build(folder, seed=1, hidden_size=16)
    with pytest.raises(
        CheckpointMismatch,
        match=r"changes the model shape \(hidden_size: checkpoint 8, this config "
        r"16\)",
    ):
        wider.checkpoints.resume(run.checkpoints.latest(), wider.data)
    with pytest.raises(
        TypeError,
        match=r"^Argument data should be the trainer's data \(what trainer.run was given\), "
        r"got None\.$",
    ):
        fresh.checkpoints.resume(run.checkpoints.latest(), None)
    model = StatefulLSTM(input_size=3, hidden_size=8)
    no_trainer = attach_checkpoints(
        fresh.trainer, Engine(lambda e, b: None), {"model": model}, {"model": model}, tmp_path / "other", enabled=False
    )
    with pytest.raises(ValueError, match=r"^Argument to_save of attach_checkpoints should hold the trainer, e\.g\. "):
        no_trainer.resume(run.checkpoints.latest(), fresh.data)
    assert _files(folder) == before and fresh.trainer.state.iteration == 0


def test_resume_from_checkpoint_keeps_its_signature_and_needs_a_loader_that_skips_mid_epoch(tmp_path):
    """The lower-level call (the command line's before ``resume``): objects, trainer, data, no savers."""
    stopped = _train(_build(tmp_path, scores=[0.5] * EPOCHS), stop_at=PER_EPOCH + 1)
    checkpoint = read_checkpoint(stopped.checkpoints.latest())
    fresh = _build(tmp_path, seed=1)
    with pytest.raises(
        TypeError,
        match=r"^Argument data should be a SkipBatches or an entry of to_load that restores "
        r"its own position \(the checkpoint is mid-epoch\), got DataLoader\.$",
    ):
        resume_from_checkpoint(checkpoint, fresh.checkpoints.objects, fresh.trainer, fresh.data)
    fresh = _build(tmp_path, seed=1)
    data = SkipBatches(fresh.data)
    resume_from_checkpoint(checkpoint, fresh.checkpoints.objects, fresh.trainer, data, source="stopped.pt")
    assert data.skip == 1 and fresh.trainer.state.iteration == PER_EPOCH + 1
    assert fresh.checkpoints["best"].last_checkpoint is None  # the savers' lists are resume's


def test_without_other_savers_the_interrupted_file_stays_and_the_log_says_why(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ignite_lstm")
    stopped = _train(_build(tmp_path, enabled=False), stop_at=PER_EPOCH + 1)
    resumed = _build(tmp_path, seed=123, enabled=False)
    _train(resumed, resumed.checkpoints.resume(stopped.checkpoints.latest(), resumed.data))
    name = f"interrupted_checkpoint_{PER_EPOCH + 1}.pt"
    assert _files(tmp_path) == [name]  # the only file to resume from
    kept = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Kept ")]
    assert kept == [
        f"Kept {name}: checkpoints are off apart from the interrupted one, so it is this run's only file to resume from."
    ]
