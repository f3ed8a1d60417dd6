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
