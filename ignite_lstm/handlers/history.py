"""Per-epoch metrics history with the best value and epoch of every metric."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ignite_lstm._internal.atomic import atomic_write
from ignite_lstm.metrics.directions import metric_direction

__all__ = ["MetricsHistory"]


def _direction(key: str) -> str | None:
    """'min'/'max' for a metric key such as 'val/mse_f3' or 'train/loss'; None for others (lr)."""
    name = key.split("/", 1)[-1]
    if name == "loss":
        return "min"
    try:
        return metric_direction(name)
    except ValueError:
        return None


class MetricsHistory:
    """Records one entry per epoch and tracks the best value of each metric.

    A stateful handler (``state_dict``/``load_state_dict``) so that it travels in
    training checkpoints and a resumed run continues the same history.

    Example:
        >>> history = MetricsHistory()
        >>> history.record(1, {"train/loss": 0.4, "val/mse": 0.3, "lr": 1e-3})
        >>> history.best["val/mse"]
        {'value': 0.3, 'epoch': 1}
    """

    def __init__(self) -> None:
        self.epochs: list[dict[str, Any]] = []
        self.best: dict[str, dict[str, Any]] = {}

    def record(self, epoch: int, values: Mapping[str, float]) -> None:
        """Add or merge the values of ``epoch`` and update the best values."""
        entry = next((e for e in self.epochs if e["epoch"] == epoch), None)
        if entry is None:
            entry = {"epoch": epoch}
            self.epochs.append(entry)
        for key, value in values.items():
            value = float(value)
            entry[key] = value
            direction = _direction(key)
            if direction is None or math.isnan(value):
                continue
            best = self.best.get(key)
            better = best is None or (value < best["value"] if direction == "min" else value > best["value"])
            if better:
                self.best[key] = {"value": value, "epoch": epoch}

    def series(self, key: str) -> list[float]:
        """The values of ``key`` over the recorded epochs (missing epochs skipped)."""
        return [e[key] for e in self.epochs if key in e]

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": [dict(e) for e in self.epochs], "best": {k: dict(v) for k, v in self.best.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epochs = [dict(e) for e in state["epochs"]]
        self.best = {k: dict(v) for k, v in state["best"].items()}

    def save(self, path: str | Path) -> None:
        """Write ``{"epochs": [...], "best": {...}}`` as JSON, atomically (on failure the file is as it was)."""
        text = json.dumps(self.state_dict(), indent=2, allow_nan=True)
        atomic_write(path, lambda f: f.write(text.encode()))
