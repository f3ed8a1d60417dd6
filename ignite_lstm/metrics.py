"""Evaluation metrics for the signal-extraction task.

The evaluator's ``engine.state.output`` is a dict ``{"y_pred": (N, O), "y": (N, O), "x": (N, F_in),
"mask": (N,) bool}`` with N = B*T (every time step of every sequence flattened), ``x[:, 1:1+F]`` the
one-hot selector of the wanted frequency and ``mask`` True at the steps that count: every metric built
here keeps only those rows (an output without ``mask`` counts every row). Ignite's regression metrics divide by the first dimension, so every metric
built here sees y_pred and y flattened to (N*O,): all values are element-wise.

``SignalToNoiseRatio`` is the one metric Ignite lacks; MSE, RMSE and MAE are Ignite's own, configured by
``build_metrics``; correlation and R2 are Ignite's definitions with their running sums in float64. Every metric all-reduces its
sums across processes when computed. ``metric_direction`` tells checkpointing and early stopping which
way is better.
"""

import math
import re
from collections.abc import Callable, Sequence

import torch
from ignite.exceptions import NotComputableError
from ignite.metrics import MeanAbsoluteError, MeanSquaredError, Metric, MetricsLambda, RootMeanSquaredError
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce

from ignite_lstm._compat import metric_placement

__all__ = ["METRIC_NAMES", "SignalToNoiseRatio", "build_metrics", "metric_direction"]


class SignalToNoiseRatio(Metric):
    r"""Signal-to-noise ratio in dB over every element seen.

    .. math:: \text{SNR} = 10 \log_{10} \frac{\sum y^2}{\sum (y - \hat{y})^2}

    ``update`` takes ``(y_pred, y)`` (or the engine's dict, via ``required_output_keys``) of any
    equal shapes. Sums are kept in float64 and reduced across ranks.

    Returns ``inf`` when the error sum is 0 (a perfect prediction) and ``-inf`` when the signal sum is
    0 but the error is not.
    """

    _state_dict_all_req_keys = ("_sum_signal", "_sum_error", "_num_elements")

    @reinit__is_reduced
    def reset(self) -> None:
        device, dtype = metric_placement(self)
        self._sum_signal = torch.tensor(0.0, dtype=dtype, device=device)
        self._sum_error = torch.tensor(0.0, dtype=dtype, device=device)
        self._num_elements = 0

    @reinit__is_reduced
    def update(self, output: Sequence[torch.Tensor]) -> None:
        """Add one batch.

        Args:
            output: ``(y_pred, y)``, tensors of the same shape.
        """
        y_pred, y = output[0].detach(), output[1].detach()
        if y_pred.shape != y.shape:
            raise ValueError(f"Input data shapes should be the same, but given {y_pred.shape} and {y.shape}")
        device, dtype = metric_placement(self)
        y = y.to(dtype)
        error = y - y_pred.to(dtype)
        self._sum_signal += y.square().sum().to(device)
        self._sum_error += error.square().sum().to(device)
        self._num_elements += y.numel()

    @sync_all_reduce("_sum_signal", "_sum_error", "_num_elements")
    def compute(self) -> float:
        """Returns the SNR in dB over everything seen since ``reset`` (all ranks)."""
        if self._num_elements == 0:
            raise NotComputableError("SignalToNoiseRatio must have at least one example before it can be computed.")
        signal, error = self._sum_signal.item(), self._sum_error.item()
        if error == 0.0:
            return math.inf
        if signal == 0.0:
            return -math.inf
        return 10.0 * math.log10(signal / error)


class _MomentSums(Metric):
    """Running float64 sums of y, y_pred, their squares, their product and the squared error.

    Ignite's ``PearsonCorrelation`` and ``R2Score`` add float32 sums and then take
    differences of them (``E[xy] - E[x] E[y]``), so their value depends on the order of
    addition: on the batch size, and on how many processes shared the data (a correlation
    of -0.094 changed in its fifth digit between one and two processes). These keep every
    sum in float64; ``compute`` all-reduces them across ranks.
    """

    _name = "metric"
    _sums = ("_s_pred", "_s_y", "_s_pred2", "_s_y2", "_s_prod", "_s_err2")
    _state_dict_all_req_keys = _sums + ("_num_examples",)

    @reinit__is_reduced
    def reset(self) -> None:
        device, dtype = metric_placement(self)
        for name in self._sums:
            setattr(self, name, torch.tensor(0.0, dtype=dtype, device=device))
        self._num_examples = 0

    @reinit__is_reduced
    def update(self, output: Sequence[torch.Tensor]) -> None:
        device, dtype = metric_placement(self)
        y_pred, y = (t.detach().reshape(-1).to(dtype) for t in output[:2])
        if y_pred.shape != y.shape:
            raise ValueError(f"Input data shapes should be the same, but given {y_pred.shape} and {y.shape}")
        for name, value in zip(self._sums, (y_pred, y, y_pred * y_pred, y * y, y_pred * y, (y - y_pred) ** 2)):
            setattr(self, name, getattr(self, name) + value.sum().to(device))
        self._num_examples += y.numel()

    @sync_all_reduce("_s_pred", "_s_y", "_s_pred2", "_s_y2", "_s_prod", "_s_err2", "_num_examples")
    def compute(self) -> float:
        if self._num_examples == 0:
            raise NotComputableError(f"{self._name} must have at least one example before it can be computed.")
        return self._value(self._num_examples, *(getattr(self, name).item() for name in self._sums))

    def _value(self, n: int, s_pred: float, s_y: float, s_pred2: float, s_y2: float, s_prod: float,
               s_err2: float) -> float:
        raise NotImplementedError


class _PearsonCorrelation(_MomentSums):
    """Pearson's r of y_pred and y, as Ignite's ``PearsonCorrelation`` (eps 1e-8), in float64."""

    _name = "PearsonCorrelation"

    def _value(self, n, s_pred, s_y, s_pred2, s_y2, s_prod, s_err2) -> float:
        cov = s_prod / n - s_pred * s_y / (n * n)
        var_pred = max(s_pred2 / n - (s_pred / n) ** 2, 0.0)
        var_y = max(s_y2 / n - (s_y / n) ** 2, 0.0)
        return cov / max(math.sqrt(var_pred * var_y), 1e-8)


class _R2Score(_MomentSums):
    """The coefficient of determination 1 - SSE / SST, as Ignite's ``R2Score``, in float64."""

    _name = "R2Score"

    def _value(self, n, s_pred, s_y, s_pred2, s_y2, s_prod, s_err2) -> float:
        return 1.0 - s_err2 / (s_y2 - s_y * s_y / n)


_FACTORIES: dict[str, Callable[..., Metric]] = {
    "mse": MeanSquaredError,
    "rmse": RootMeanSquaredError,
    "mae": MeanAbsoluteError,
    "corr": _PearsonCorrelation,
    "r2": _R2Score,
    "snr": SignalToNoiseRatio,
}
_DIRECTIONS = {"mse": "min", "rmse": "min", "mae": "min", "corr": "max", "r2": "max", "snr": "max"}

METRIC_NAMES: tuple[str, ...] = tuple(_FACTORIES)
"""Names accepted by ``build_metrics``; per-frequency keys add ``_f<Hz>`` to them."""

_KEY_RE = re.compile(r"^(?P<base>[a-z0-9]+)(?:_f.+|_worst)?$")


def _rows(output: dict, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    # The counted rows (and `rows`), then (n, O) -> (n*O,): Ignite divides by the first
    # dimension, we want element-wise means.
    mask = output.get("mask")
    if mask is not None:
        rows = mask if rows is None else rows & mask
    if rows is None:
        return output["y_pred"].reshape(-1), output["y"].reshape(-1)
    return output["y_pred"][rows].reshape(-1), output["y"][rows].reshape(-1)


def _flatten(output: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return _rows(output)


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

    Every metric keeps the rows whose ``mask`` is True (the steps that count; every row of an output
    without a mask), then flattens y_pred and y, each (n, O), to (n*O,) before updating, so MSE, MAE,
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
    metrics: dict[str, Metric] = {
        name: _FACTORIES[name](output_transform=_flatten, device=device) for name in names
    }
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
        pick = max if _DIRECTIONS[name] == "min" else min
        metrics[f"{name}_worst"] = MetricsLambda(lambda *values, pick=pick: pick(values),
                                                 *(metrics[f"{name}_f{s}"] for s in suffixes))
    return metrics


def metric_direction(name: str) -> str:
    """Which way a metric improves, for checkpoint scores and early stopping.

    Args:
        name: a key from ``build_metrics``: a bare name (``"snr"``) or a per-frequency key (``"mse_f3"``).

    Returns:
        ``"min"`` for mse, rmse, mae (and their per-frequency keys), ``"max"`` for corr, r2, snr.

    Example:
        >>> metric_direction("mse_f3"), metric_direction("snr")
        ('min', 'max')
    """
    match = _KEY_RE.match(name) if isinstance(name, str) else None
    if match is None or match["base"] not in _DIRECTIONS:
        raise ValueError(f"Unknown metric {name!r}; allowed: {list(METRIC_NAMES)}, optionally with a _f<Hz> or _worst "
                         f"suffix.")
    return _DIRECTIONS[match["base"]]
