"""Stop a run in the middle of an epoch and continue it from plain Python with one call.

The script that trains is written to be started again after a stop: it builds its
objects, attaches ``attach_checkpoints`` to its folder, and continues from the newest
training file there if there is one::

    latest = checkpoints.latest()
    data = checkpoints.resume(latest, loader) if latest else loader
    trainer.run(data, max_epochs=EPOCHS)

``resume`` loads the model, optimizer and trainer, gives each saver its list of files
back (so the best model stays the best, and old files are removed as they would have
been), restores the random generators (dropout, the ``shuffle=True`` order) and skips
the batches of the epoch already trained on. Here the first start is stopped at
iteration 8, in the middle of epoch 3, as Ctrl-C would stop it (``trainer.terminate()``,
then ``checkpoints["interrupted"](trainer)`` saves the file); the second start, with other
objects and another seed as a new process would have, finishes the run. A third run in
another folder is left alone: its validation history, its best file and the files it
leaves are the same.

Run: ``python examples/resume_by_hand.py [OUTPUT_DIR]`` (default: a temporary folder).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
import torch.nn as nn
from ignite.engine import Events
from torch.utils.data import DataLoader

from ignite_lstm import StatefulLSTM, attach_checkpoints, create_evaluator, create_trainer
from ignite_lstm.app.task.dataset import SignalDataset
from ignite_lstm.app.task.generator import generate_split
from ignite_lstm.app.task.metrics import build_metrics

TASK = dict(
    frequencies=[1.0, 3.0], fs=1000.0, duration=0.2, amplitude_range=(0.8, 1.2), phase_scale=0.01, noise_sigma=0.1
)
EPOCHS = 5


def train(run_dir: Path, seed: int, stop_at: int = 0) -> tuple[list[float], Path]:
    """One start of the training script; ``stop_at``: stop there as Ctrl-C would. Returns the validation
    MSE of each epoch it ran and the best file so far."""
    torch.manual_seed(seed)
    split, val = generate_split(**TASK, n_mixtures=3, seed=1), generate_split(**TASK, n_mixtures=1, seed=3)
    loader = DataLoader(SignalDataset(split.mixture, split.target, input_scale=4.0), batch_size=2, shuffle=True)
    val_loader = DataLoader(SignalDataset(val.mixture, val.target, input_scale=4.0), batch_size=2)
    model = StatefulLSTM(input_size=3, hidden_size=16, num_layers=2, dropout=0.2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    trainer = create_trainer(model, optimizer, nn.MSELoss(), tbptt_steps=50, update="window")
    evaluator = create_evaluator(model, build_metrics(names=("mse",)))
    history: list[float] = []
    # validation first: the checkpoints of an epoch then hold its score
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED, lambda _: history.append(evaluator.run(val_loader).metrics["mse"])
    )
    checkpoints = attach_checkpoints(
        trainer,
        evaluator,
        {"model": model, "optimizer": optimizer, "trainer": trainer},
        {"model": model},
        run_dir,
        n_saved=1,
        every=2,
    )
    if stop_at:
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=stop_at), lambda engine: engine.terminate())

    latest = checkpoints.latest()
    data = checkpoints.resume(latest, loader) if latest else loader
    if latest:
        s = trainer.state
        print(
            f"resumed from {latest.name}: epoch {s.epoch}, iteration {s.iteration} "
            f"({s.iteration % s.epoch_length} of {s.epoch_length} batches of epoch {s.epoch + 1} done)"
        )
    trainer.run(data, max_epochs=EPOCHS)
    if trainer.state.epoch < EPOCHS or trainer.state.iteration % trainer.state.epoch_length:
        checkpoints["interrupted"](trainer)
        saved = checkpoints["interrupted"].last_checkpoint
        print(f"stopped at iteration {trainer.state.iteration}; saved {saved.name}")
    return history, checkpoints["best"].last_checkpoint


def run(output_dir: Path) -> None:
    first, _ = train(output_dir / "stopped", seed=0, stop_at=8)
    rest, best = train(output_dir / "stopped", seed=1)  # a new process: other objects, another seed
    alone, best_alone = train(output_dir / "alone", seed=0)
    files = sorted(p.name for p in (output_dir / "stopped").iterdir() if not p.name.startswith("interrupted_"))
    files_alone = sorted(p.name for p in (output_dir / "alone").iterdir())
    print(f"val mse, stopped and resumed: {' '.join(f'{v:.5f}' for v in first + rest)}")
    print(f"val mse, left alone:          {' '.join(f'{v:.5f}' for v in alone)}")
    print(f"best: {best.name} (left alone: {best_alone.name})")
    print(f"files: {', '.join(files)}")
    same = first + rest == alone and best.name == best_alone.name and files == files_alone
    print(f"the resumed run equals the run left alone: {same}")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run(Path(sys.argv[1] if len(sys.argv) > 1 else tmp))  # attach_checkpoints creates the folders


if __name__ == "__main__":
    main()
