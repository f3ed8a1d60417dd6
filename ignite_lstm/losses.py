"""The training losses a config can name, and their unreduced (per-element) forms."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["LOSSES", "setup_loss", "elementwise_loss"]

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
}


def setup_loss(name: str) -> nn.Module:
    """One of mse, l1, huber, smooth_l1 (all mean-reduced and elementwise)."""
    if name not in LOSSES:
        raise ValueError(f"Argument name should be one of {tuple(LOSSES)}, got {name!r}.")
    return LOSSES[name]()


def elementwise_loss(loss_fn: Callable) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """The unreduced form of a mean-reduced elementwise loss module, or None.

    For these losses the mean over a chunk of C steps equals the mean of the
    per-step losses, which is what makes chunked evaluation exact.
    """
    for cls, fn in _ELEMENTWISE.items():
        if type(loss_fn) is cls and getattr(loss_fn, "reduction", None) == "mean":
            return lambda a, b, _m=loss_fn, _fn=fn: _fn(_m, a, b)
    return None
