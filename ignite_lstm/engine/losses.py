"""The training losses a config can name, their unreduced forms, and the loss contract of the engines.

The contract (``create_trainer``): ``loss_fn(y_pred, y)`` receives the counted positions
flattened, y_pred (N, O) (logits (N, C) for classes) and y (N, O) floats or (N,) class
indices, and returns the mean over the N positions of a per-position value
``l(y_pred[n], y[n])``: every built-in loss, every mean-reduced elementwise loss and
``nn.CrossEntropyLoss()``/``nn.NLLLoss()`` as given. It is what makes the batch loss a
weighted mean of window losses. A class-weighted (``weight=``) cross-entropy is a mean
weighted by ``weight[y_n]``, and positions whose class is its ``ignore_index`` count nowhere
(``loss_positions`` gives the weights and folds those positions into the mask), so a batch cut
into windows gives the loss ``loss_fn`` gives on all its counted positions at once. The per-step
losses of the ``fused-detached`` path need the per-position values: ``StepLosses`` computes them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "LOSSES",
    "setup_loss",
    "elementwise_loss",
    "check_loss",
    "masked_loss",
    "loss_positions",
    "StepLosses",
]

logger = logging.getLogger(__name__)

LOSSES: dict[str, type[nn.Module]] = {
    "mse": nn.MSELoss,
    "l1": nn.L1Loss,
    "huber": nn.HuberLoss,
    "smooth_l1": nn.SmoothL1Loss,
}
"""Config name (``train.loss``) -> loss class; all mean-reduced and elementwise."""

_ELEMENTWISE: dict[type, Callable] = {
    nn.MSELoss: lambda m, a, b: F.mse_loss(a, b, reduction="none"),
    nn.L1Loss: lambda m, a, b: F.l1_loss(a, b, reduction="none"),
    nn.SmoothL1Loss: lambda m, a, b: F.smooth_l1_loss(a, b, reduction="none", beta=m.beta),
    nn.HuberLoss: lambda m, a, b: F.huber_loss(a, b, reduction="none", delta=m.delta),
    nn.CrossEntropyLoss: lambda m, a, b: F.cross_entropy(
        a, b, weight=m.weight, ignore_index=m.ignore_index, reduction="none", label_smoothing=m.label_smoothing
    ),
    nn.NLLLoss: lambda m, a, b: F.nll_loss(a, b, weight=m.weight, ignore_index=m.ignore_index, reduction="none"),
}
_CLASS_LOSSES = (nn.CrossEntropyLoss, nn.NLLLoss)  # mean weighted by weight[y], ignore_index counts nowhere


def setup_loss(name: str) -> nn.Module:
    """One of mse, l1, huber, smooth_l1 (all mean-reduced and elementwise)."""
    if name not in LOSSES:
        raise ValueError(f"Argument name should be one of {tuple(LOSSES)}, got {name!r}.")
    return LOSSES[name]()


def elementwise_loss(loss_fn: Callable) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """The unreduced form of a mean-reduced elementwise loss module, or None.

    For these losses the mean over a chunk of C steps equals the mean of the
    per-step losses (weighted as ``loss_positions`` says), which is what makes chunked
    evaluation exact. The form takes (N, O) predictions and (N, O) or (N,) targets.
    """
    for cls, fn in _ELEMENTWISE.items():
        if type(loss_fn) is cls and getattr(loss_fn, "reduction", None) == "mean":
            # a lambda with default arguments: cast, as mypy cannot infer its type
            return cast(
                Callable[[torch.Tensor, torch.Tensor], torch.Tensor], lambda a, b, _m=loss_fn, _fn=fn: _fn(_m, a, b)
            )
    return None


def check_loss(loss_fn: Callable) -> None:
    """Refuse what cannot follow the loss contract: a non-callable, a loss not mean-reduced."""
    if not callable(loss_fn):
        raise TypeError(f"Argument loss_fn should be callable, got {type(loss_fn).__name__}.")
    reduction = getattr(loss_fn, "reduction", "mean")
    if isinstance(reduction, str) and reduction != "mean":
        raise ValueError(
            f"Argument loss_fn should be mean-reduced (the mean over (sequence, step) positions), got "
            f"reduction={reduction!r}."
        )


def masked_loss(
    loss_fn: Callable, y_pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, count: int
) -> torch.Tensor | None:
    """The loss over the counted positions of a (B, K, O) segment, ``count`` of them; None if there are none.

    ``loss_fn`` receives the counted positions flattened: y_pred (count, O) and y (count, O) or
    (count,) (y (B, K) class indices). The mask is applied before the loss, so an uncounted
    value (NaN included) never enters it.
    """
    if count == 0:
        return None
    if mask is None or count == mask.numel():
        return loss_fn(y_pred.reshape(-1, y_pred.shape[-1]), y.reshape(-1, *y.shape[2:]))
    return loss_fn(y_pred[mask], y[mask])


def loss_positions(
    loss_fn: Callable, y: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The positions that count for ``loss_fn`` and their weights in its mean.

    For ``nn.CrossEntropyLoss``/``nn.NLLLoss`` with class indices: a position whose class is
    ``ignore_index`` counts nowhere (loss, metrics), and with ``weight`` a position weighs
    ``weight[y]`` (what those losses divide by). Any other loss: the mask as given, weight 1.

    Args:
        loss_fn: the loss.
        y: (B, T, ...) per-step targets.
        mask: (B, T) bool or None.

    Returns:
        ``(mask, weights)``: the mask (None: all count) and a (B, T) float64 tensor of weights, or None for 1.
    """
    if type(loss_fn) not in _CLASS_LOSSES or y.is_floating_point() or y.dim() != 2:
        return mask, None
    kept = y != getattr(loss_fn, "ignore_index", -100)
    if mask is not None:
        kept = kept & mask
    elif bool(kept.all()):
        kept = None
    weight = getattr(loss_fn, "weight", None)
    if weight is None:
        return kept, None
    weights = weight.detach().to(y.device, torch.float64)[y if kept is None else torch.where(kept, y, 0)]
    return kept, weights


class StepLosses:
    """Per-step losses of a chunk: the loss of each one-step window, over its counted sequences.

    For a built-in loss, its unreduced form; for any other, ``loss_fn`` vectorised over
    the positions by ``torch.func.vmap`` (one call per position, batched); where vmap
    cannot take the loss, one ``loss_fn`` call per step (said once in the log). A step
    without a counted position has the loss NaN.
    """

    def __init__(self, loss_fn: Callable) -> None:
        self.loss_fn = loss_fn
        self.elementwise = elementwise_loss(loss_fn)
        self.vectorised = True

    def __call__(
        self, y_pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """y_pred (B, C, O), y (B, C, ...) without graph, mask (B, C) or None, weights (B, C) or None -> (C,)."""
        with torch.no_grad():
            if mask is not None and not y.is_floating_point():  # an uncounted class index may be out of range
                y = torch.where(mask.reshape(*mask.shape, *(1,) * (y.dim() - 2)), y, 0)
            values = self._positions(y_pred, y) if self.elementwise or self.vectorised else None
            if values is None:
                return self._step_by_step(y_pred, y, mask)
            if weights is not None:  # a class-weighted loss: sum(w l) / sum(w); its unreduced form is w l
                kept = weights if mask is None else torch.where(mask, weights, 0.0)
                values = values if mask is None else torch.where(mask, values, values.new_zeros(()))
                return (values.sum(0) / kept.sum(0)).to(values.dtype)  # 0 / 0: NaN
            if mask is None:
                return values.mean(0)
            counted = mask.sum(0)  # (C,)
            return torch.where(mask, values, values.new_zeros(())).sum(0) / counted  # 0 / 0: NaN

    def _positions(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        B, C, O = y_pred.shape
        rows, targets = y_pred.reshape(B * C, O), y.reshape(B * C, *y.shape[2:])
        if self.elementwise is not None:
            return self.elementwise(rows, targets).reshape(B, C, -1).mean(-1)
        try:
            values = torch.func.vmap(self.loss_fn)(rows.unsqueeze(1), targets.unsqueeze(1))
            if values.shape != (B * C,):
                raise ValueError(f"one position's loss has the shape {tuple(values.shape[1:])}, not ()")
        except Exception as exc:  # vmap refuses some operations (data-dependent control flow, .item(), ...)
            self.vectorised = False
            logger.warning(
                "The per-step window losses of the fused-detached path take one loss_fn call per step: "
                "torch.func.vmap could not vectorise %s (%s: %s). Expected cost: %d extra loss calls per "
                "chunk of %d steps, without gradients; the training itself is unchanged.",
                type(self.loss_fn).__name__,
                type(exc).__name__,
                exc,
                C,
                C,
            )
            return None
        return values.reshape(B, C)

    def _step_by_step(self, y_pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        losses = y_pred.new_full((y_pred.shape[1],), float("nan"), dtype=torch.promote_types(y_pred.dtype, y.dtype))
        for t in range(y_pred.shape[1]):
            m = None if mask is None else mask[:, t : t + 1]
            count = y_pred.shape[0] if m is None else int(m.sum())
            loss = masked_loss(self.loss_fn, y_pred[:, t : t + 1], y[:, t : t + 1], m, count)
            if loss is not None:
                losses[t] = loss
        return losses
