"""ignite_lstm: an event-driven PyTorch-Ignite training engine for stateful L = 1 recurrent models.

The library, re-exported here, is what a user needs to train any model that follows the contract
``forward(x, state=None) -> (y, state)`` (x (B, T, F), y (B, T, O), any nesting of tensors as state)
with Ignite engines. Importing it loads torch, ignite and numpy, nothing heavier:

- engines (``ignite_lstm.engine``): `create_trainer`, `create_evaluator`, `select_execution`,
  `TimeEvents`, `collate_sequences`, `collate_last`, `reset_state`, `set_state`;
- models (``ignite_lstm.models``): `StatefulLSTM`, `StatefulGRU`, `load_model`;
- data (``ignite_lstm.data``): `StreamLoader`, `h5_series`, `forecast_pair`, `DataFileError`;
- metrics (``ignite_lstm.metrics``): `SignalToNoiseRatio`, `metric_direction`;
- handlers (``ignite_lstm.handlers``, ``ignite_lstm.checkpoint``): `attach_checkpoints`,
  `attach_early_stopping`, `attach_tensorboard`, `attach_progress`, `attach_terminate_on_nan`,
  `load_extra_handlers`, `setup_lr_scheduler`.

The signal-extraction application (config, data generator, runs, search, export, serving) lives in
``ignite_lstm.app``. The documentation site (``docs/``) has the guides and the API reference.
"""

from typing import Any as _Any

from ignite_lstm._internal import deprecated as _deprecated

__version__ = "0.2.0"

_deprecated.install()

from ignite_lstm.engine import (  # noqa: E402
    TimeEvents,
    collate_last,
    collate_sequences,
    create_evaluator,
    create_trainer,
    reset_state,
    select_execution,
    set_state,
)
from ignite_lstm.models import StatefulGRU, StatefulLSTM, load_model  # noqa: E402

# Heavier parts of the library (tqdm, h5py, tensorboardX through Ignite's logger) load on first use.
_LAZY = {
    "StreamLoader": "ignite_lstm.data.streams",
    "h5_series": "ignite_lstm.data.sources",
    "forecast_pair": "ignite_lstm.data.sources",
    "DataFileError": "ignite_lstm.data.errors",
    "SignalToNoiseRatio": "ignite_lstm.metrics.regression",
    "metric_direction": "ignite_lstm.metrics.directions",
    "attach_checkpoints": "ignite_lstm.checkpoint.savers",
    "attach_early_stopping": "ignite_lstm.handlers.common",
    "attach_progress": "ignite_lstm.handlers.common",
    "attach_terminate_on_nan": "ignite_lstm.handlers.common",
    "load_extra_handlers": "ignite_lstm.handlers.common",
    "attach_tensorboard": "ignite_lstm.handlers.tensorboard",
    "setup_lr_scheduler": "ignite_lstm.handlers.schedules",
}
# The application's names, at the top level before 0.2 (deprecated here).
_MOVED = {
    "load_config": "ignite_lstm.app.config",
    "validate_config": "ignite_lstm.app.config",
    "ConfigError": "ignite_lstm.app.config",
    "generate_split": "ignite_lstm.app.task.generator",
    "SplitData": "ignite_lstm.app.task.generator",
    "read_split": "ignite_lstm.app.task.h5io",
    "write_split": "ignite_lstm.app.task.h5io",
    "SignalDataset": "ignite_lstm.app.task.dataset",
    "ensure_split": "ignite_lstm.app.task.dataset",
    "build_metrics": "ignite_lstm.app.task.metrics",
}


def __getattr__(name: str) -> _Any:
    import importlib
    import warnings

    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _MOVED:
        warnings.warn(
            f"ignite_lstm.{name} is deprecated and will be removed in ignite_lstm "
            f"{_deprecated.REMOVED_IN}; use {_MOVED[name]}.{name} instead.",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module 'ignite_lstm' has no attribute {name!r}")


__all__ = [
    "create_trainer",
    "create_evaluator",
    "select_execution",
    "TimeEvents",
    "collate_sequences",
    "collate_last",
    "reset_state",
    "set_state",
    "StatefulLSTM",
    "StatefulGRU",
    "load_model",
    *_LAZY,
]
