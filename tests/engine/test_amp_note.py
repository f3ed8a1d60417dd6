"""``amp_dtype`` that leaves a model in float32 says so once in the log (issue 26: it was a silent no-op)."""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from ignite_lstm.engine.factories import create_evaluator, create_trainer
from ignite_lstm.models.lstm import StatefulLSTM


class _Plain(nn.Module):
    """A model of the user's: it follows autocast, so amp_dtype is no no-op for it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1)

    def forward(self, x, state=None):
        return self.lin(x), state


def _notes(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "computes in float32 under autocast" in r.getMessage()]


def test_amp_dtype_on_a_float32_model_is_said_once(caplog):
    model = StatefulLSTM(2, 4)
    with caplog.at_level(logging.INFO):
        create_trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss(), amp_dtype=torch.bfloat16)
        create_evaluator(model, amp_dtype=torch.bfloat16)  # the same model: not said again
    assert _notes(caplog) == [
        "amp_dtype=torch.bfloat16: StatefulLSTM computes in float32 under autocast (its recurrence has no "
        "bfloat16 form that the execution paths agree on), so the setting changes only the loss; leave "
        "amp_dtype=None for the same numbers without autocast's overhead."
    ]
    assert [r.levelname for r in caplog.records if "float32 under autocast" in r.getMessage()] == ["WARNING"]


def test_nothing_is_said_without_amp_or_for_a_model_that_follows_autocast(caplog):
    with caplog.at_level(logging.INFO):
        model = StatefulLSTM(2, 4)
        create_trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss())
        create_evaluator(_Plain(), amp_dtype=torch.bfloat16)
    assert _notes(caplog) == []
