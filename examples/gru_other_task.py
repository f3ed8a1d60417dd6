"""The engines reused with a GRU on another sequence task: 3 inputs, 2 outputs.

Shows that ``create_trainer``/``create_evaluator`` work with any model that follows
``forward(x, state=None) -> (y, state)``: here an ``nn.GRU`` whose state is one tensor
(num_layers, B, H) and which has no ``step`` method (the engines call
``model(x[:, None], state)`` for one step). The task, from white-noise inputs x (B, T, 3):

- output 0: a leaky running sum of input 0, ``s(t) = 0.8 * s(t-1) + x0(t)``;
- output 1: input 1 delayed by 2 steps (input 2 is a distractor).

The trainer takes the fused path (one GRU call per 10-step window, the state carried
and detached between windows); the evaluator is run once fused and once step by step
(the L = 1 call) and both give the same numbers.

Run: ``python examples/gru_other_task.py`` (a few seconds on a CPU).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from ignite.engine import Events
from torch.utils.data import DataLoader, TensorDataset

from ignite_lstm import TimeEvents, create_evaluator, create_trainer
from ignite_lstm.app.task.metrics import build_metrics

N_IN, N_OUT, DELAY, LEAK = 3, 2, 2, 0.8


class GRURegressor(nn.Module):
    """A GRU with a linear read-out. x (B, T, N_IN) -> y (B, T, N_OUT), state (1, B, H)."""

    def __init__(self, hidden_size: int = 32) -> None:
        super().__init__()
        self.gru = nn.GRU(N_IN, hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, N_OUT)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        out, state = self.gru(x, state)  # (B, T, H), (1, B, H)
        return self.head(out), state


def make_task(n_sequences: int, steps: int, seed: int) -> TensorDataset:
    """x (N, T, 3) white noise; y (N, T, 2): leaky running sum of x0, x1 delayed by DELAY steps."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n_sequences, steps, N_IN, generator=gen)
    y = torch.zeros(n_sequences, steps, N_OUT)
    running = torch.zeros(n_sequences)
    for t in range(steps):
        running = LEAK * running + x[:, t, 0]
        y[:, t, 0] = 0.5 * running  # scaled to unit-ish variance
    y[:, DELAY:, 1] = x[:, :-DELAY, 1]
    return TensorDataset(x, y)


def main() -> None:
    torch.manual_seed(0)
    train = DataLoader(make_task(128, 40, seed=1), batch_size=32, shuffle=True)
    val = DataLoader(make_task(64, 40, seed=2), batch_size=64)

    model = GRURegressor()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    trainer = create_trainer(model, optimizer, nn.MSELoss(), tbptt_steps=10, update="window")
    # build_metrics flattens (N, O) outputs, so it works for any number of outputs.
    evaluator = create_evaluator(model, build_metrics(names=("mse", "r2")))

    windows = []
    trainer.add_event_handler(TimeEvents.WINDOW_COMPLETED(every=50), lambda e: windows.append(e.state.window))

    @trainer.on(Events.EPOCH_COMPLETED(every=5))
    def validate(engine):
        metrics = evaluator.run(val).metrics
        print(f"epoch {engine.state.epoch:2d}  val mse {metrics['mse']:.4f}  r2 {metrics['r2']:.3f}")

    start = evaluator.run(val).metrics["mse"]
    print(f"execution path: {trainer.execution}; untrained val mse {start:.4f}")
    trainer.run(train, max_epochs=10)

    fused = evaluator.run(val).metrics["mse"]
    stepwise = create_evaluator(model, build_metrics(names=("mse",)), execution="stepwise").run(val).metrics["mse"]
    print(f"windows seen: {trainer.state.window} (every 50th: {windows})")
    print(f"GRU val mse: fused {fused:.5f}, stepwise {stepwise:.5f} (untrained {start:.4f})")


if __name__ == "__main__":
    main()
