"""Data for the engines: streams of long series laid out in lanes, their sources, the data error."""

from typing import Any

from ignite_lstm._internal.deprecated import moved_name
from ignite_lstm.data.errors import DataFileError
from ignite_lstm.data.sources import forecast_pair, h5_series
from ignite_lstm.data.streams import StreamLoader
from ignite_lstm.engine.batches import collate_sequences

__all__ = ["StreamLoader", "h5_series", "forecast_pair", "DataFileError", "collate_sequences"]


def __getattr__(name: str) -> Any:  # the flat layout's names that moved (deprecated)
    return moved_name(__name__, name)
