"""Early stopping and checkpointing attached by hand to engines made by the factories.

``create_trainer``/``create_evaluator`` return plain Ignite ``Engine`` objects, so
Ignite's own handlers attach to them as to any other engine: validation runs at every
epoch end, ``EarlyStopping`` watches the validation MSE and stops the trainer, and
``Checkpoint`` keeps the best model (and the optimizer and trainer state, enough to
resume). At the end the best file is loaded into a fresh model with
``Checkpoint.load_objects`` and evaluated again: same MSE as when it was saved.
(``ignite_lstm.attach_checkpoints``/``attach_early_stopping`` do the same from the config.)

Run: ``python examples/attach_by_hand.py [OUTPUT_DIR]`` (default: a temporary folder).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
import torch.nn as nn
from ignite.engine import Events
from ignite.handlers import Checkpoint, DiskSaver, EarlyStopping, global_step_from_engine
from torch.utils.data import DataLoader

from ignite_lstm import StatefulLSTM, create_evaluator, create_trainer
from ignite_lstm.app.task.dataset import SignalDataset
from ignite_lstm.app.task.generator import generate_split
from ignite_lstm.app.task.metrics import build_metrics

FREQUENCIES = [1.0, 3.0]
COMMON = dict(
    frequencies=FREQUENCIES, fs=1000.0, duration=0.2, amplitude_range=(0.8, 1.2), phase_scale=0.01, noise_sigma=0.0
)


def _loader(n_mixtures: int, seed: int, shuffle: bool = False) -> DataLoader:
    split = generate_split(**COMMON, n_mixtures=n_mixtures, seed=seed)
    return DataLoader(SignalDataset(split.mixture, split.target, input_scale=4.0), batch_size=4, shuffle=shuffle)


def neg_val_mse(evaluator) -> float:
    """Ignite scores are 'higher is better'."""
    return -evaluator.state.metrics["mse"]


def run(output_dir: Path) -> None:
    torch.manual_seed(0)
    train_loader, val_loader = _loader(4, seed=1, shuffle=True), _loader(1, seed=3)
    model = StatefulLSTM(input_size=1 + len(FREQUENCIES), hidden_size=16)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    trainer = create_trainer(model, optimizer, nn.MSELoss(), tbptt_steps=50, update="window")
    evaluator = create_evaluator(model, build_metrics(names=("mse",)))

    history = []

    @trainer.on(Events.EPOCH_COMPLETED)
    def validate(engine):
        history.append(evaluator.run(val_loader).metrics["mse"])
        if engine.state.epoch % 5 == 0:
            print(f"epoch {engine.state.epoch:2d} val mse {history[-1]:.4f}")

    # Both listen to the evaluator: they run after each validation.
    stopper = EarlyStopping(patience=3, score_function=neg_val_mse, trainer=trainer)
    evaluator.add_event_handler(Events.COMPLETED, stopper)
    best = Checkpoint(
        {"model": model, "optimizer": optimizer, "trainer": trainer},
        DiskSaver(str(output_dir), require_empty=False),
        filename_prefix="best",
        score_function=neg_val_mse,
        score_name="neg_val_mse",
        global_step_transform=global_step_from_engine(trainer),  # file name carries the epoch
        n_saved=1,
    )
    evaluator.add_event_handler(Events.COMPLETED, best)

    max_epochs = 60
    trainer.run(train_loader, max_epochs=max_epochs)
    stopped = "stopped early" if trainer.state.epoch < max_epochs else "ran all epochs"
    print(f"{stopped} at epoch {trainer.state.epoch} of {max_epochs}")

    path = output_dir / best.last_checkpoint
    fresh = StatefulLSTM(input_size=1 + len(FREQUENCIES), hidden_size=16)
    Checkpoint.load_objects({"model": fresh}, torch.load(path, weights_only=True))
    mse = create_evaluator(fresh, build_metrics(names=("mse",))).run(val_loader).metrics["mse"]
    print(f"best checkpoint: {path.name}; best val mse {min(history):.4f}, reloaded from the file {mse:.4f}")


def main() -> None:
    if len(sys.argv) > 1:
        out = Path(sys.argv[1])
        out.mkdir(parents=True, exist_ok=True)
        run(out)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            run(Path(tmp))


if __name__ == "__main__":
    main()
