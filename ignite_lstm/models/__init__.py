"""Models that follow the engines' contract: ``StatefulLSTM``, ``StatefulGRU`` and their native CPU kernel (``native``)."""

from typing import Any

from ignite_lstm._internal.deprecated import moved_name
from ignite_lstm.models.gru import StatefulGRU
from ignite_lstm.models.lstm import LSTMState, StatefulLSTM, load_model

__all__ = ["StatefulLSTM", "StatefulGRU", "LSTMState", "load_model"]


def __getattr__(name: str) -> Any:  # the flat layout's names that moved (deprecated)
    return moved_name(__name__, name)
