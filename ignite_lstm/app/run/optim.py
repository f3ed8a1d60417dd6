"""The optimizers a config can name (``train.optimizer``), built by ``setup_optimizer``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["OPTIMIZERS", "setup_optimizer"]

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
}
"""Config name (``train.optimizer``) -> optimizer class."""

_MOMENTUM = ("sgd", "rmsprop")  # the optimizers that take a momentum argument


def setup_optimizer(
    name: str, params: Iterable[Any], *, lr: float, weight_decay: float = 0.0, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """Build the optimizer named by ``train.optimizer``.

    Args:
        name: a key of ``OPTIMIZERS``: adam, adamw, sgd or rmsprop.
        params: the parameters (or parameter groups) to optimize.
        lr: the learning rate.
        weight_decay: L2 weight decay (decoupled for adamw).
        momentum: for sgd and rmsprop only; the others ignore it.

    Returns:
        The torch optimizer.

    Example:
        >>> optimizer = setup_optimizer("adam", model.parameters(), lr=3e-3)
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"Argument name should be one of {tuple(OPTIMIZERS)}, got {name!r}.")
    kwargs: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
    if name in _MOMENTUM:
        kwargs["momentum"] = momentum
    return OPTIMIZERS[name](params, **kwargs)
