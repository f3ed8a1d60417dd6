"""Sequences of different lengths with masks, a loss of your own on the fast path, and a metric of your own.

Each sequence is a noisy sine of its own frequency and length (40 to 120 steps, drawn
with a fixed seed); the model recovers the clean sine from the noisy one.
``collate_sequences`` pads every batch to its longest sequence and adds the mask: the
padded steps count nowhere (loss, gradients, metrics). The loss is a log-cosh of
the user's (not a built-in class) and still takes the chunked ``fused-detached``
path at ``tbptt_steps=1``. The metric, the largest absolute error over the counted
steps, is an Ignite ``Metric`` of the user's; Ignite's own ``EarlyStopping`` and
``Checkpoint`` watch it on the validation split.

Run: ``python examples/variable_lengths.py [OUTPUT_DIR]`` (default: a temporary folder).
"""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn as nn
from ignite.engine import Events
from ignite.handlers import Checkpoint, DiskSaver, EarlyStopping, global_step_from_engine
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce
from torch.utils.data import DataLoader

from ignite_lstm import StatefulLSTM, collate_sequences, create_evaluator, create_trainer


def noisy_sines(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """n sequences (x (T, 1) noisy, y (T, 1) clean), T drawn from 40..120."""
    gen = torch.Generator().manual_seed(seed)
    sequences = []
    for _ in range(n):
        steps = int(torch.randint(40, 121, (1,), generator=gen))
        omega = 0.1 + 0.3 * float(torch.rand(1, generator=gen))
        clean = torch.sin(omega * torch.arange(steps, dtype=torch.float32))[:, None]
        sequences.append((clean + 0.3 * torch.randn(steps, 1, generator=gen), clean))
    return sequences


class LogCosh(nn.Module):
    """log(cosh(error)), averaged: quadratic for small errors, linear for large ones."""

    def forward(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        error = y_pred - y
        return (error.abs() + nn.functional.softplus(-2.0 * error.abs()) - math.log(2.0)).mean()


class MaxAbsError(Metric):
    """The largest |y_pred - y| over the counted steps (the evaluator's output holds only those rows)."""

    required_output_keys = ("y_pred", "y")  # taken from the evaluator's output dict, in this order

    @reinit__is_reduced
    def reset(self) -> None:
        self._max = torch.tensor(0.0, dtype=torch.float64)

    @reinit__is_reduced
    def update(self, output: tuple[torch.Tensor, torch.Tensor]) -> None:
        y_pred, y = output  # (N, O), (N, O): the N counted steps of the batch, padding left out
        error = (y_pred - y).abs()
        if error.numel():
            self._max = torch.maximum(self._max, error.max().to(torch.float64))

    @sync_all_reduce("_max:MAX")
    def compute(self) -> float:
        return self._max.item()


def neg_max_abs_error(evaluator) -> float:
    """Ignite scores are 'higher is better'."""
    return -evaluator.state.metrics["max_abs_error"]


def run(output_dir: Path) -> None:
    torch.manual_seed(0)
    train = DataLoader(noisy_sines(32, seed=1), batch_size=8, shuffle=True, collate_fn=collate_sequences)
    val = DataLoader(noisy_sines(8, seed=2), batch_size=8, collate_fn=collate_sequences)
    x, _, mask = next(iter(val))
    print(f"validation batch: {tuple(x.shape)} padded, lengths {mask.sum(1).tolist()}")

    model = StatefulLSTM(input_size=1, hidden_size=16)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    trainer = create_trainer(model, optimizer, LogCosh(), tbptt_steps=1)
    print(f"execution path: {trainer.state.execution} (loss {type(LogCosh()).__name__})")
    evaluator = create_evaluator(model, {"max_abs_error": MaxAbsError()})

    history = []

    @trainer.on(Events.EPOCH_COMPLETED)
    def validate(engine):
        value = evaluator.run(val).metrics["max_abs_error"]
        history.append(value)
        if engine.state.epoch % 5 == 0:
            print(
                f"epoch {engine.state.epoch:2d} loss {engine.state.metrics['epoch_loss']:.4f} "
                f"val max_abs_error {value:.4f}"
            )

    # Both listen to the evaluator: they run after each validation.
    evaluator.add_event_handler(
        Events.COMPLETED, EarlyStopping(patience=5, score_function=neg_max_abs_error, trainer=trainer)
    )
    best = Checkpoint(
        {"model": model},
        DiskSaver(str(output_dir), require_empty=False),
        filename_prefix="best",
        score_function=neg_max_abs_error,
        score_name="neg_max_abs_error",
        global_step_transform=global_step_from_engine(trainer),
        n_saved=1,
    )
    evaluator.add_event_handler(Events.COMPLETED, best)

    max_epochs = 40
    trainer.run(train, max_epochs=max_epochs)
    stopped = "stopped early" if trainer.state.epoch < max_epochs else "ran all epochs"
    print(f"{stopped} at epoch {trainer.state.epoch} of {max_epochs}; {trainer.state.window} windows")

    path = Path(best.last_checkpoint)
    fresh = StatefulLSTM(input_size=1, hidden_size=16)
    Checkpoint.load_objects({"model": fresh}, torch.load(output_dir / path.name, weights_only=True))
    reloaded = create_evaluator(fresh, {"max_abs_error": MaxAbsError()}).run(val).metrics["max_abs_error"]
    print(
        f"best checkpoint: {path.name}; best val max_abs_error {min(history):.4f}, "
        f"reloaded from the file {reloaded:.4f} (first epoch {history[0]:.4f})"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1:
        run(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            run(Path(tmp))
