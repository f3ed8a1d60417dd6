"""The package's own task from plain Python: no YAML, no command line.

Generates the signal-extraction splits with ``generate_split`` (a round trip through
HDF5 with ``write_split``/``read_split``), wraps them in ``SignalDataset``, and trains a
``StatefulLSTM`` with ``create_trainer``/``create_evaluator`` and ``build_metrics``,
every argument an explicit keyword. ``tbptt_steps=1`` with ``update="sequence"`` is the
literal L = 1 setting; the trainer takes its exact fused form (``trainer.execution``
is ``"fused-detached"``). The data is shortened to 0.3 s per sequence so that the
script runs in seconds.

Run: ``python examples/plain_python.py``
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.nn as nn
from ignite.engine import Events
from torch.utils.data import DataLoader

from ignite_lstm import StatefulLSTM, create_evaluator, create_trainer
from ignite_lstm.app.task.dataset import SignalDataset
from ignite_lstm.app.task.generator import generate_split
from ignite_lstm.app.task.h5io import read_split, write_split
from ignite_lstm.app.task.metrics import build_metrics

FREQUENCIES = [1.0, 3.0, 5.0, 7.0]
COMMON = dict(
    frequencies=FREQUENCIES, fs=1000.0, duration=0.3, amplitude_range=(0.8, 1.2), phase_scale=0.01, noise_sigma=0.0
)


def main() -> None:
    torch.manual_seed(0)
    train_split = generate_split(**COMMON, n_mixtures=4, seed=1)  # mixture (4, 300), target (4, 300)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_split(Path(tmp) / "val.h5", generate_split(**COMMON, n_mixtures=1, seed=3), "val")
        val_split = read_split(path, expected_split="val")  # validated on read
    train_set = SignalDataset(train_split.mixture, train_split.target, input_scale=4.0)  # 16 sequences
    val_set = SignalDataset(val_split.mixture, val_split.target, input_scale=4.0)  # 4 sequences
    x, y = train_set[0]
    print(f"one sequence: x {tuple(x.shape)}, y {tuple(y.shape)}")  # (T, 1 + F), (T, 1)

    model = StatefulLSTM(input_size=1 + len(FREQUENCIES), hidden_size=32)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    trainer = create_trainer(model, optimizer, nn.MSELoss(), tbptt_steps=1, update="sequence", grad_clip=1.0)
    evaluator = create_evaluator(model, build_metrics(FREQUENCIES, names=("mse", "snr")))

    @trainer.on(Events.EPOCH_COMPLETED(every=10))
    def validate(engine):
        metrics = evaluator.run(DataLoader(val_set, batch_size=4)).metrics
        per_freq = " ".join(f"{k}={v:.3f}" for k, v in metrics.items() if k.startswith("mse_f"))
        print(
            f"epoch {engine.state.epoch:2d} loss {engine.state.output['loss']:.4f} "
            f"val mse {metrics['mse']:.4f} snr {metrics['snr']:.2f} dB  {per_freq}"
        )

    print(f"execution path: {trainer.execution}")
    trainer.run(DataLoader(train_set, batch_size=8, shuffle=True), max_epochs=30)
    print(f"trained {trainer.state.epoch} epochs, {trainer.state.window} windows (one per time step)")


if __name__ == "__main__":
    main()
