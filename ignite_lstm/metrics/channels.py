"""Metrics per output channel: any Ignite metric, once per channel of y, keyed ``name_<channel>``.

A forecaster of several targets (O > 1) wants each one's error: ``channel_metrics(MeanSquaredError,
"mse", ["infl", "unemp"])`` gives ``{"mse_infl": ..., "mse_unemp": ...}``, each metric fed the
counted rows (the evaluator output's ``mask``) of its channel only, as (n,) tensors. Task-free: any
metric class (or factory) that takes ``output_transform`` and ``device`` works, Ignite's or
``ignite_lstm.metrics.regression``'s. ``worst`` adds the worst channel's value as one more metric.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from ignite.metrics import Metric, MetricsLambda

from ignite_lstm.metrics.directions import metric_direction

__all__ = ["channel_metrics", "channel_rows"]


def channel_rows(output: dict, channel: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The counted rows (``mask``; every row without one) of one output channel: ``(y_pred, y)``, each (n,).

    Args:
        output: the evaluator's dict ``{"y_pred": (N, O), "y": (N, O), "mask": (N,) bool, ...}``.
        channel: the index into O.

    Returns:
        ``(y_pred[rows, channel], y[rows, channel])``.
    """
    y_pred, y, mask = output["y_pred"], output["y"], output.get("mask")
    if mask is not None:
        y_pred, y = y_pred[mask], y[mask]
    return y_pred[:, channel], y[:, channel]


def channel_metrics(
    metric: Callable[..., Metric],
    name: str,
    channels: int | Sequence[str],
    *,
    worst: bool = False,
    device: str | torch.device = "cpu",
) -> dict[str, Metric]:
    """One fresh metric per output channel, for the evaluator's dict output.

    Args:
        metric: a metric class or factory taking ``output_transform=`` and ``device=``
            (``MeanSquaredError``, ``MeanAbsoluteError``, ``R2Score``, ``partial(...)``, ...).
        name: the key's stem: channel c is keyed ``f"{name}_{channels[c]}"``.
        channels: O (the channels are named ``0`` .. ``O-1``) or the O names in channel order.
        worst: also ``f"{name}_worst"``: the worst channel (largest, or smallest for a metric
            whose ``metric_direction(name)`` is ``"max"``), an Ignite ``MetricsLambda``.
        device: where the metrics accumulate.

    Returns:
        A new dict ``{key: Metric}``, ready for ``create_evaluator(model, metrics)``.

    Example:
        >>> metrics = channel_metrics(MeanSquaredError, "mse", ["infl", "unemp"], worst=True)
        >>> sorted(metrics)
        ['mse_infl', 'mse_unemp', 'mse_worst']
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"Argument name should be a non-empty string, got {name!r}.")
    if isinstance(channels, int) and not isinstance(channels, bool):
        if channels < 1:
            raise ValueError(f"Argument channels should be positive, got {channels}.")
        labels = [str(c) for c in range(channels)]
    elif isinstance(channels, Sequence) and not isinstance(channels, str):
        labels = [str(c) for c in channels]
        if not labels or len(set(labels)) != len(labels):
            raise ValueError(f"Argument channels should hold distinct names, got {list(channels)}.")
    else:
        raise TypeError(f"Argument channels should be an int or a sequence of names, got {type(channels).__name__}.")
    metrics: dict[str, Metric] = {
        f"{name}_{label}": metric(output_transform=lambda o, c=c: channel_rows(o, c), device=device)
        for c, label in enumerate(labels)
    }
    if worst:
        pick = max if metric_direction(name) == "min" else min
        parts = list(metrics.values())
        metrics[f"{name}_worst"] = MetricsLambda(lambda *values: pick(values), *parts)
    return metrics
