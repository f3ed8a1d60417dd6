"""Which way a metric improves: the registry that checkpoint scores, early stopping and histories read.

A name is looked up as given, then by its base, the part before the first ``_`` (``mse_f3``,
``mse_worst`` and ``accuracy_class2`` improve as ``mse`` and ``accuracy`` do). Common Ignite metric
names are known; a project registers its own with ``register_metric_direction``.
"""

from __future__ import annotations

__all__ = ["metric_direction", "register_metric_direction", "known_metric_names"]

_DIRECTIONS: dict[str, str] = {
    # errors and losses: lower is better
    "mse": "min",
    "rmse": "min",
    "mae": "min",
    "loss": "min",
    "nll": "min",
    "cross_entropy": "min",
    "error": "min",
    "mape": "min",
    # agreement and scores: higher is better
    "corr": "max",
    "r2": "max",
    "snr": "max",
    "accuracy": "max",
    "precision": "max",
    "recall": "max",
    "f1": "max",
    "fbeta": "max",
    "auc": "max",
    "iou": "max",
    "miou": "max",
}


def register_metric_direction(name: str, mode: str) -> None:
    """Declare which way the metric ``name`` (and every ``name_<suffix>``) improves.

    Args:
        name: the metric's key as attached to the evaluator, or its base.
        mode: ``"min"`` or ``"max"``.

    Example:
        >>> register_metric_direction("wer", "min")
        >>> metric_direction("wer_dev")
        'min'
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"Argument name should be a non-empty string, got {name!r}.")
    if mode not in ("min", "max"):
        raise ValueError(f"Argument mode should be 'min' or 'max', got {mode!r}.")
    _DIRECTIONS[name] = mode


def known_metric_names() -> list[str]:
    """The names (and bases) whose direction is known, sorted."""
    return sorted(_DIRECTIONS)


def metric_direction(name: str) -> str:
    """Which way a metric improves, for checkpoint scores and early stopping.

    Args:
        name: a metric key: a known name (``"snr"``), or one with a suffix (``"mse_f3"``, ``"mse_worst"``).

    Returns:
        ``"min"`` or ``"max"``.

    Raises:
        ValueError: neither the name nor its base is known (``register_metric_direction`` adds one).

    Example:
        >>> metric_direction("mse_f3"), metric_direction("snr")
        ('min', 'max')
    """
    if not isinstance(name, str):
        raise ValueError(f"Unknown metric {name!r}: a metric name is a string.")
    base, _, suffix = name.partition("_")
    for key in (name, base if suffix else None):
        if key in _DIRECTIONS:
            return _DIRECTIONS[key]
    raise ValueError(
        f"Unknown metric {name!r}; known: {known_metric_names()}, optionally with a _<suffix>; "
        f"declare others with register_metric_direction(name, 'min' | 'max')."
    )
