"""Task-free metrics for the evaluator's output, and which way each metric improves."""

from typing import Any

from ignite_lstm._internal.deprecated import moved_name
from ignite_lstm.metrics.channels import channel_metrics, channel_rows
from ignite_lstm.metrics.directions import known_metric_names, metric_direction, register_metric_direction
from ignite_lstm.metrics.regression import (
    REGRESSION_METRICS,
    PearsonCorrelation,
    R2Score,
    SignalToNoiseRatio,
    counted_rows,
    flatten_counted,
)

__all__ = [
    "channel_metrics",
    "channel_rows",
    "SignalToNoiseRatio",
    "PearsonCorrelation",
    "R2Score",
    "REGRESSION_METRICS",
    "counted_rows",
    "flatten_counted",
    "metric_direction",
    "register_metric_direction",
    "known_metric_names",
]


def __getattr__(name: str) -> Any:  # the flat layout's names that moved (deprecated)
    return moved_name(__name__, name)
