"""Exact resume with a DataLoader's own generator (and a sampler's), and an early-stopped run resumed from Python."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
from ignite.engine import Events
from ignite.handlers import EarlyStopping
from ignite.metrics import Accuracy
from torch.utils.data import DataLoader, RandomSampler

from ignite_lstm import StatefulLSTM, attach_checkpoints, collate_last, create_evaluator, create_trainer
from ignite_lstm.checkpoint.files import CheckpointMismatch

EPOCHS, PER_EPOCH = 3, 4


def _items(n=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(3 + i % 4, 2, generator=gen), i % 3) for i in range(n)]


def _loader(kind: str) -> DataLoader:
    items = _items()
    if kind == "loader":  # DataLoader(generator=...): its RandomSampler draws from it
        return DataLoader(
            items, batch_size=2, shuffle=True, collate_fn=collate_last, generator=torch.Generator().manual_seed(0)
        )
    sampler = RandomSampler(items, replacement=True, num_samples=8, generator=torch.Generator().manual_seed(1))
    return DataLoader(items, batch_size=2, sampler=sampler, collate_fn=collate_last)


def _build(folder: Path, kind: str, seed: int = 0, patience: int | None = None):
    torch.manual_seed(seed)
    model = StatefulLSTM(2, 6, output_size=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    trainer = create_trainer(model, optimizer, nn.CrossEntropyLoss(), targets="last", tbptt_steps=8)
    evaluator = create_evaluator(model, {"accuracy": Accuracy()}, targets="last")
    loader = _loader(kind)
    losses: list[float] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"]))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run(_loader("loader")))
    to_save = {"model": model, "optimizer": optimizer, "trainer": trainer}
    if patience is not None:
        stopper = EarlyStopping(patience, lambda e: 0.0, trainer)  # never improves after the first
        evaluator.add_event_handler(Events.COMPLETED, stopper)
        to_save["early_stopping"] = stopper
    checkpoints = attach_checkpoints(trainer, evaluator, to_save, {"model": model}, folder, monitor="accuracy")
    return trainer, model, loader, losses, checkpoints


@pytest.mark.parametrize("kind", ["loader", "sampler"])
@pytest.mark.parametrize("stop_at", [PER_EPOCH + 2, PER_EPOCH])  # mid-epoch, end of an epoch
def test_a_loader_with_its_own_generator_resumes_to_the_run_left_alone(tmp_path, kind, stop_at):
    trainer, model, loader, alone, _ = _build(tmp_path / "alone", kind)
    trainer.run(loader, max_epochs=EPOCHS)

    trainer, _, loader, losses, checkpoints = _build(tmp_path / "stopped", kind)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=stop_at), lambda e: e.terminate())
    trainer.run(loader, max_epochs=EPOCHS)
    checkpoints["interrupted"](trainer)
    assert losses == alone[:stop_at]

    trainer, resumed_model, loader, resumed, checkpoints = _build(tmp_path / "stopped", kind, seed=7)
    loader.generator and loader.generator.manual_seed(99)  # a new process: other generator states
    loader.sampler.generator.manual_seed(99)
    trainer.run(checkpoints.resume(checkpoints.latest(), loader), max_epochs=EPOCHS)
    assert resumed == alone[stop_at:]
    assert all(torch.equal(a, b) for a, b in zip(resumed_model.state_dict().values(), model.state_dict().values()))


def test_resuming_an_early_stopped_run_from_python_is_refused_with_the_reason(tmp_path):
    trainer, _, loader, losses, checkpoints = _build(tmp_path, "loader", patience=1)
    trainer.run(loader, max_epochs=10)
    assert trainer.state.epoch == 2  # stopped early
    trainer, _, loader, _, checkpoints = _build(tmp_path, "loader", patience=1)
    with pytest.raises(CheckpointMismatch, match=r"stopped early at epoch 2 \(1 validations without improvement, "):
        checkpoints.resume(checkpoints.latest(), loader)
    trainer, _, loader, resumed, checkpoints = _build(tmp_path, "loader", patience=3)  # a larger patience: goes on
    trainer.run(checkpoints.resume(checkpoints.latest(), loader), max_epochs=10)
    assert trainer.state.epoch == 4 and len(resumed) == 2 * PER_EPOCH
