"""What ``StatefulLSTM`` and ``StatefulGRU`` share: checked sizes, a stack of one-layer cells, a read-out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn as nn

__all__ = ["StackedRNN"]


class StackedRNN(nn.Module):
    """``num_layers`` one-layer ``cell`` modules (``layers``) and a linear read-out (``head``).

    Subclasses set ``cell`` (``nn.LSTM``, ``nn.GRU``) and define the recurrence. The arguments are
    checked once, here; ``config`` returns them, so ``type(model)(**model.config)`` rebuilds the model.
    """

    cell: Callable[..., nn.Module]  # nn.LSTM or nn.GRU: (input_size, hidden_size, batch_first=...)
    detached_saved_per_unit = 6  # values per step, sequence and hidden unit of a layer the detached forward keeps
    detached_chunk_bytes = 64 * 2**20  # what one chunk of the detached path may keep for its backward, by default

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        output_size: int = 1,
    ) -> None:
        super().__init__()
        for name, value in (
            ("input_size", input_size),
            ("hidden_size", hidden_size),
            ("num_layers", num_layers),
            ("output_size", output_size),
        ):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"Argument {name} should be an integer, got {type(value).__name__}.")
            if value < 1:
                raise ValueError(f"Argument {name} should be positive, got {value}.")
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool):
            raise TypeError(f"Argument dropout should be a float, got {type(dropout).__name__}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"Argument dropout should be in [0, 1), got {dropout}.")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.dropout, self.output_size = float(dropout), output_size
        sizes = [input_size] + [hidden_size] * (num_layers - 1)
        self.layers = nn.ModuleList(self.cell(n_in, hidden_size, batch_first=True) for n_in in sizes)
        self.head = nn.Linear(hidden_size, output_size)

    def detached_chunk_steps(self, batch_size: int, element_size: int = 4) -> int:
        """Steps per chunk of the trainer's ``fused-detached`` path when ``create_trainer`` has no ``chunk_steps``.

        The most steps whose arrays, the ones a chunk's forward keeps for its backward (per layer
        ``detached_saved_per_unit`` values per unit: the LSTM's h, c and four gates, the GRU's h and
        four), the inputs and the backward's gradients into the layers' outputs, fit in
        ``detached_chunk_bytes``: the memory a chunk holds does not grow with the batch, and a small
        batch takes fewer, longer chunks, each of which costs a fixed overhead (the read-out,
        the loss, autograd, the engine's per-chunk work).

        Args:
            batch_size: B, the sequences of the batch.
            element_size: bytes per value (4 for float32, 8 for float64).

        Returns:
            The chunk length in steps, >= 1.

        Example:
            >>> StatefulLSTM(5, 64, num_layers=2).detached_chunk_steps(40)
            465
        """
        H = self.hidden_size
        per_unit = self.num_layers * self.detached_saved_per_unit + 2  # + the backward's dL/dh, two in turn
        per_step = batch_size * element_size * (per_unit * H + self.input_size + self.output_size)
        return max(1, self.detached_chunk_bytes // per_step)

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments: ``type(model)(**model.config)`` rebuilds the model."""
        return {
            "input_size": self.input_size,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "dropout": self.dropout,
            "output_size": self.output_size,
        }
