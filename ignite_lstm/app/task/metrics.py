"""The signal task's metrics: overall, per frequency (from the one-hot selector) and the worst frequency.

The evaluator's ``engine.state.output`` is a dict ``{"y_pred": (N, O), "y": (N, O), "x": (N, F_in)}`` of
the N counted steps (padding left out by the engine); ``x[:, 1:1+F]`` is the one-hot selector of the
wanted frequency (the task's input layout ``[S, one-hot]``). Every metric sees y_pred and y flattened
(an output that still has a ``mask`` key, from an evaluator of one's own, has its counted rows kept).
"""

from collections.abc import Callable, Sequence

import torch
from ignite.metrics import Metric, MetricsLambda

from ignite_lstm.metrics.directions import metric_direction
from ignite_lstm.metrics.regression import REGRESSION_METRICS as _FACTORIES
from ignite_lstm.metrics.regression import counted_rows as _rows
from ignite_lstm.metrics.regression import flatten_counted as _flatten

__all__ = ["METRIC_NAMES", "build_metrics", "metric_direction"]


METRIC_NAMES: tuple[str, ...] = tuple(_FACTORIES)
"""Names accepted by ``build_metrics``; per-frequency keys add ``_f<Hz>`` to them."""


def _select_frequency(index: int, num_frequencies: int) -> Callable[[dict], tuple[torch.Tensor, torch.Tensor]]:
    def transform(output: dict) -> tuple[torch.Tensor, torch.Tensor]:
        selector = output["x"][:, 1 : 1 + num_frequencies]  # (N, F)
        return _rows(output, selector.argmax(dim=1) == index)  # may select nothing in this batch

    return transform


def _check_names(argument: str, names: Sequence[str]) -> None:
    if isinstance(names, str):
        raise TypeError(f"Argument {argument} should be a sequence of metric names, got a string {names!r}.")
    unknown = [n for n in names if n not in _FACTORIES]
    if unknown:
        raise ValueError(f"Argument {argument} has unknown metric names {unknown}; allowed: {list(METRIC_NAMES)}.")


def build_metrics(
    frequencies: Sequence[float] | None = None,
    *,
    names: Sequence[str] = ("mse", "rmse", "mae", "corr", "r2", "snr"),
    per_frequency: Sequence[str] = ("mse",),
    worst: Sequence[str] = ("mse",),
    device: str | torch.device = "cpu",
) -> dict[str, Metric]:
    """Build fresh metric instances for the evaluator's dict output.

    Every metric takes the output's rows (the engine's evaluator gives the counted steps only; a ``mask``
    key, if any, keeps its True rows), then flattens y_pred and y, each (n, O), to (n*O,) before updating, so MSE, MAE,
    RMSE, Pearson correlation, R2 and SNR are all over single elements of counted steps. Per-frequency metrics keep only the
    rows whose selector ``x[:, 1:1+F].argmax(dim=1)`` is that frequency's index (F = len(frequencies)).

    A batch without a given frequency contributes nothing to that frequency's metrics; a whole split
    without it makes ``compute`` raise ``NotComputableError`` (so does an empty split for any metric).

    Args:
        frequencies: the task's frequencies in Hz, in selector order. None: no per-frequency metrics.
        names: overall metrics, keyed by the bare name (``"mse"``, ``"snr"``, ...).
        per_frequency: metrics also computed per frequency, keyed ``f"{name}_f{freq:g}"``
            (``mse_f3`` for 3 Hz, ``mse_f2.5`` for 2.5 Hz). Ignored when ``frequencies`` is None.
        worst: per-frequency metrics whose worst frequency is a metric too, keyed
            ``f"{name}_worst"`` (the largest ``mse``, the smallest ``snr``; an Ignite
            ``MetricsLambda`` of the per-frequency ones), with two frequencies or more.
        device: where the metrics accumulate.

    Returns:
        A new dict ``{key: Metric}``, ready for ``metric.attach(evaluator, key)``.

    Example:
        >>> metrics = build_metrics([1.0, 3.0], names=("mse", "snr"))
        >>> sorted(metrics)
        ['mse', 'mse_f1', 'mse_f3', 'snr']
        >>> evaluator = create_evaluator(model, metrics)  # attached under these keys
    """
    _check_names("names", names)
    _check_names("per_frequency", per_frequency)
    metrics: dict[str, Metric] = {name: _FACTORIES[name](output_transform=_flatten, device=device) for name in names}
    if frequencies is None:
        return metrics
    frequencies = list(frequencies)
    if not frequencies:
        raise ValueError("Argument frequencies should be a non-empty sequence or None, got [].")
    suffixes = [f"{freq:g}" for freq in frequencies]
    if len(set(suffixes)) != len(suffixes):
        raise ValueError(f"Argument frequencies should have distinct values as formatted by :g, got {suffixes}.")
    for name in per_frequency:
        for index, suffix in enumerate(suffixes):
            transform = _select_frequency(index, len(frequencies))
            metrics[f"{name}_f{suffix}"] = _FACTORIES[name](output_transform=transform, device=device)
    for name in worst if len(suffixes) > 1 else ():
        if name not in per_frequency:
            raise ValueError(f"Argument worst should name metrics of per_frequency, got {name!r}.")
        pick = max if metric_direction(name) == "min" else min
        metrics[f"{name}_worst"] = MetricsLambda(
            lambda *values, pick=pick: pick(values), *(metrics[f"{name}_f{s}"] for s in suffixes)
        )
    return metrics
