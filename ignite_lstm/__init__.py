"""ignite_lstm: an event-driven PyTorch-Ignite training engine for stateful L = 1 recurrent models.

The public API, re-exported here, is what a user needs to train any model that
follows the contract ``forward(x, state=None) -> (y, state)`` (x (B, T, F),
y (B, T, O), any nesting of tensors as state) with Ignite engines:

- engines: `create_trainer`, `create_evaluator`, `select_execution`, `TimeEvents`, `collate_sequences`,
  `reset_state`, `set_state` (state carried across batches);
- the package's model: `StatefulLSTM`, `load_model`;
- metrics: `build_metrics`, `SignalToNoiseRatio`, `metric_direction`;
- handlers: `attach_checkpoints`, `attach_early_stopping`, `attach_tensorboard`,
  `attach_progress`, `attach_terminate_on_nan`, `load_extra_handlers`, `setup_lr_scheduler`;
- configuration: `load_config`, `validate_config`, `ConfigError`;
- data: `generate_split`, `SplitData`, `read_split`, `write_split`, `DataFileError`,
  `SignalDataset`, `ensure_split`;
- streams (series laid out in lanes, cut into chunks): `StreamLoader`, `h5_series`, `forecast_pair`.

See ``docs/api.md`` and the scripts in ``examples/``.
"""

__version__ = "0.1.0"

from ignite_lstm.batches import collate_sequences
from ignite_lstm.checkpointing import attach_checkpoints
from ignite_lstm.config import ConfigError, load_config, validate_config
from ignite_lstm.data import SignalDataset, ensure_split
from ignite_lstm.engines import TimeEvents, create_evaluator, create_trainer, reset_state, select_execution, set_state
from ignite_lstm.h5io import DataFileError, read_split, write_split
from ignite_lstm.handlers import (
    attach_early_stopping,
    attach_progress,
    attach_tensorboard,
    attach_terminate_on_nan,
    load_extra_handlers,
)
from ignite_lstm.metrics import SignalToNoiseRatio, build_metrics, metric_direction
from ignite_lstm.models import StatefulLSTM, load_model
from ignite_lstm.schedules import setup_lr_scheduler
from ignite_lstm.signal import SplitData, generate_split
from ignite_lstm.stream_sources import forecast_pair, h5_series
from ignite_lstm.streams import StreamLoader

__all__ = [
    # engines
    "create_trainer",
    "create_evaluator",
    "select_execution",
    "TimeEvents",
    "collate_sequences",
    "reset_state",
    "set_state",
    # model
    "StatefulLSTM",
    "load_model",
    # metrics
    "build_metrics",
    "SignalToNoiseRatio",
    "metric_direction",
    # handlers
    "attach_checkpoints",
    "attach_early_stopping",
    "attach_tensorboard",
    "attach_progress",
    "attach_terminate_on_nan",
    "load_extra_handlers",
    "setup_lr_scheduler",
    # configuration
    "load_config",
    "validate_config",
    "ConfigError",
    # data
    "generate_split",
    "SplitData",
    "read_split",
    "write_split",
    "DataFileError",
    "SignalDataset",
    "ensure_split",
    # streams
    "StreamLoader",
    "h5_series",
    "forecast_pair",
]
