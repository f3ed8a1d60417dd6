"""Task-free regression metrics: SNR, Pearson correlation and R² with float64 sums, and the masked rows.

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
from collections.abc import Callable, Sequence

import torch
from ignite.exceptions import NotComputableError
from ignite.metrics import MeanAbsoluteError, MeanSquaredError, Metric, RootMeanSquaredError
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce

from ignite_lstm._internal.compat import metric_placement, metric_state_keys

__all__ = [
    "SignalToNoiseRatio",
    "PearsonCorrelation",
    "R2Score",
    "REGRESSION_METRICS",
    "counted_rows",
    "flatten_counted",
]


@metric_state_keys("_sum_signal", "_sum_error", "_num_elements")
class SignalToNoiseRatio(Metric):
    r"""Signal-to-noise ratio in dB over every element seen.

    .. math:: \text{SNR} = 10 \log_{10} \frac{\sum y^2}{\sum (y - \hat{y})^2}

    ``update`` takes ``(y_pred, y)`` (or the engine's dict, via ``required_output_keys``) of any
    equal shapes. Sums are kept in float64 and reduced across ranks.

    Returns ``inf`` when the error sum is 0 (a perfect prediction) and ``-inf`` when the signal sum is
    0 but the error is not.
    """

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


@metric_state_keys("_s_pred", "_s_y", "_s_pred2", "_s_y2", "_s_prod", "_s_err2", "_num_examples")
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

    def _value(
        self, n: int, s_pred: float, s_y: float, s_pred2: float, s_y2: float, s_prod: float, s_err2: float
    ) -> float:
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


PearsonCorrelation = _PearsonCorrelation
R2Score = _R2Score

REGRESSION_METRICS: dict[str, Callable[..., Metric]] = {
    "mse": MeanSquaredError,
    "rmse": RootMeanSquaredError,
    "mae": MeanAbsoluteError,
    "corr": PearsonCorrelation,
    "r2": R2Score,
    "snr": SignalToNoiseRatio,
}
"""Short names of the element-wise regression metrics, each built as ``factory(output_transform=..., device=...)``."""


def counted_rows(output: dict, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The evaluator output's counted rows (``mask``, and ``rows`` if given) of y_pred and y, flattened.

    Ignite's regression metrics divide by the first dimension; flattening (n, O) to (n*O,) makes
    every value element-wise.

    Args:
        output: the evaluator's dict ``{"y_pred": (N, O), "y": (N, O), ...}`` (its N counted rows); an
            optional ``"mask"`` (N,) bool keeps its True rows (an output of one's own).
        rows: an optional (N,) bool selection on top of the mask.

    Returns:
        ``(y_pred, y)``, each 1-D.
    """
    y_pred, y = output["y_pred"], output["y"]
    if y_pred.shape != y.shape:
        raise ValueError(
            f"The regression metrics compare y_pred and y element by element, got y_pred of shape "
            f"{tuple(y_pred.shape)} and y of shape {tuple(y.shape)}"
            + (
                " (class indices: attach Ignite's Accuracy(), Precision(), ConfusionMatrix(...) as they are)."
                if not y.is_floating_point()
                else "."
            )
        )
    mask = output.get("mask")
    if mask is not None:
        rows = mask if rows is None else rows & mask
    if rows is None:
        return output["y_pred"].reshape(-1), output["y"].reshape(-1)
    return output["y_pred"][rows].reshape(-1), output["y"][rows].reshape(-1)


def flatten_counted(output: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``counted_rows(output)``: the output transform of an element-wise metric over the counted steps."""
    return counted_rows(output)
