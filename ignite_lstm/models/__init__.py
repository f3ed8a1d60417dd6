"""Models that follow the engines' contract: ``StatefulLSTM``, ``StatefulGRU``, their native CPU kernel (``native``) and ``chrono_init``."""

from typing import Any

from ignite_lstm._internal.deprecated import moved_name
from ignite_lstm.models.gru import StatefulGRU
from ignite_lstm.models.init import chrono_init
from ignite_lstm.models.lstm import LSTMState, StatefulLSTM, load_model

__all__ = ["StatefulLSTM", "StatefulGRU", "LSTMState", "chrono_init", "load_model"]


def __getattr__(name: str) -> Any:  # the flat layout's names that moved (deprecated)
    return moved_name(__name__, name)
