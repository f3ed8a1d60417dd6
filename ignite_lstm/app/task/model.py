"""The signal task's model: a ``StatefulLSTM`` whose input is [S, one-hot of the frequency]."""

from __future__ import annotations

from typing import Any

from ignite_lstm.models.init import chrono_init
from ignite_lstm.models.lstm import StatefulLSTM

__all__ = ["model_args", "setup_model"]


def model_args(cfg: Any) -> dict[str, Any]:
    """The ``StatefulLSTM`` arguments for the task of a validated config, without building the model.

    The input is [S, one-hot of the frequency] (``1 + F`` features), the output one value per step.

    Args:
        cfg: a validated config (``data.frequencies`` and the ``model`` section are read).

    Returns:
        The constructor arguments; equal to ``setup_model(cfg).config``, the ``model_args``
        a checkpoint stores.

    Example:
        >>> model_args(load_config("configs/quick.yaml"))
        {'input_size': 5, 'hidden_size': 16, 'num_layers': 1, 'dropout': 0.0, 'output_size': 1}
    """
    return {
        "input_size": 1 + len(cfg.data.frequencies),
        "hidden_size": int(cfg.model.hidden_size),
        "num_layers": int(cfg.model.num_layers),
        "dropout": float(cfg.model.dropout),
        "output_size": 1,
    }


def setup_model(cfg: Any) -> StatefulLSTM:
    """The ``StatefulLSTM`` for the task of a validated config: ``StatefulLSTM(**model_args(cfg))``.

    Args:
        cfg: a validated config.

    Returns:
        A new model, initialised from torch's current random state (``model.init: chrono``:
        then its gate biases by ``chrono_init``, from the same state).
    """
    model = StatefulLSTM(**model_args(cfg))
    if cfg.model.init == "chrono":
        chrono_init(model, float(cfg.model.chrono_t_max), fraction=float(cfg.model.chrono_fraction))
    return model
