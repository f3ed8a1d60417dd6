"""Ignite handlers around the loop, configured from the ``handlers:`` section.

Model selection (best checkpoint, early stopping, plateau schedule) listens to the
*validation* evaluator only; the final train/test evaluations use another one.
Only rank 0 writes files or shows progress. Checkpoints are in ``checkpointing``,
Ctrl-C and SIGTERM in ``interrupts``, TensorBoard in ``tensorboard_logging``
(``attach_tensorboard`` is imported here too).
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, cast

from ignite.engine import Engine, Events
from ignite.handlers import EarlyStopping, ProgressBar, TerminateOnNan

from ignite_lstm._internal.compat import attached_metric_names, quiet_handler_logger
from ignite_lstm.handlers.tensorboard import attach_tensorboard
from ignite_lstm.metrics.directions import metric_direction

__all__ = [
    "attach_early_stopping",
    "attach_tensorboard",
    "attach_progress",
    "attach_terminate_on_nan",
    "load_extra_handlers",
    "score_function",
    "monitor_mode",
    "check_monitor",
]

logger = logging.getLogger(__name__)


def monitor_mode(monitor: str, mode: str | None = None) -> str:
    """Which way the metric ``monitor`` improves: ``mode`` if given, else ``metric_direction(monitor)``.

    Args:
        monitor: a metric name; any name with ``mode``, else one that ``metric_direction`` knows.
        mode: ``"min"`` (lower is better), ``"max"`` (higher is better) or None (the metric's own).

    Returns:
        ``"min"`` or ``"max"``.

    Raises:
        ValueError: ``mode`` is another value, or None for a metric ``metric_direction`` does not know.
    """
    if mode is not None:
        if mode not in ("min", "max"):
            raise ValueError(f"Argument mode should be 'min', 'max' or None, got {mode!r}.")
        return mode
    try:
        return metric_direction(monitor)
    except ValueError as exc:
        raise ValueError(f"{exc} For another metric, pass mode='min' (lower is better) or mode='max'.") from None


def _monitored(monitor: str, mode: str) -> Callable[[Engine], float]:
    """The evaluator's metric ``monitor``, where a NaN or infinite value reads as the worst one in ``mode``."""
    worst = math.inf if mode == "min" else -math.inf

    def value(engine: Engine) -> float:
        if monitor not in engine.state.metrics:
            raise ValueError(
                f"Argument monitor names the metric {monitor!r}, which the evaluator did not produce; its metrics "
                f"are {sorted(engine.state.metrics)}."
            )
        found = float(engine.state.metrics[monitor])
        return found if math.isfinite(found) else worst

    return value


def check_monitor(evaluator: Engine, monitor: str) -> None:
    """Refuse a ``monitor`` that none of the metrics attached to ``evaluator`` produces.

    An evaluator without an attached metric yet is not checked here: the first validation
    checks it then (``score_function``, ``attach_early_stopping``), listing the names that exist.

    Args:
        evaluator: the evaluator the monitored metric comes from.
        monitor: the metric's name.
    """
    if not isinstance(monitor, str):
        raise TypeError(f"Argument monitor should be a string, got {type(monitor).__name__}.")
    names = attached_metric_names(evaluator)
    if names and monitor not in names:
        raise ValueError(
            f"Argument monitor should name a metric attached to the evaluator, got {monitor!r}; attached: "
            f"{sorted(names)} (attach the metric before the handler that watches it)."
        )


def score_function(monitor: str, mode: str | None = None) -> Callable[[Engine], float]:
    """Ignite score (higher is better) from the evaluator's metric ``monitor``; NaN/inf scores lowest.

    Args:
        monitor: the metric name.
        mode: its direction, ``"min"`` or ``"max"`` (None: ``metric_direction(monitor)``).

    Returns:
        ``engine -> score``: the value, negated where lower is better.
    """
    mode = monitor_mode(monitor, mode)
    value, sign = _monitored(monitor, mode), -1.0 if mode == "min" else 1.0
    return lambda engine: sign * value(engine)


def attach_early_stopping(
    trainer: Engine,
    val_evaluator: Engine,
    *,
    monitor: str,
    patience: int,
    min_delta: float = 0.0,
    mode: str | None = None,
    event_filter: Callable[[Engine, int], bool] | None = None,
) -> EarlyStopping:
    """Ignite's ``EarlyStopping`` on the validation ``monitor``, in the metric's direction.

    An improvement is a value better than the best so far by more than ``min_delta``
    (``cumulative=True``: the best moves only on an improvement, so slow steady
    progress still counts once it adds up to ``min_delta``). After ``patience``
    validations without one, the trainer stops at the end of that epoch (its
    checkpoints are written first). A NaN value never improves.

    Args:
        trainer: the engine to stop.
        val_evaluator: the validation evaluator; checked each time it completes.
        monitor: its metric name; lower is better for errors (mse, mae, ...), higher for snr, corr, r2.
        patience: validations without improvement before stopping.
        min_delta: the smallest change that counts as an improvement (>= 0).
            A ``monitor`` that no metric attached to the evaluator produces is refused here
            (ValueError listing the attached names), or at the first validation if none is attached yet.
        mode: ``"min"`` (lower is better) or ``"max"``; needed for a metric of your own, whose
            direction ``metric_direction`` does not know (None: the metric's own direction).
        event_filter: an Ignite event filter on the evaluator's ``COMPLETED``: a validation it
            rejects is not counted (a curriculum's ``final_stage_only``); None: every one counts.

    Returns:
        The ``EarlyStopping`` handler (``state_dict``/``load_state_dict`` for checkpoints).

    Example:
        >>> stopper = attach_early_stopping(trainer, evaluator, monitor="mse", patience=10, min_delta=1e-4)
        >>> trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run(val_loader))
    """
    check_monitor(val_evaluator, monitor)
    mode = monitor_mode(monitor, mode)
    stopper = EarlyStopping(
        patience=patience,
        score_function=_monitored(monitor, mode),
        trainer=trainer,
        threshold=min_delta,
        cumulative=True,
        mode=cast(Literal["min", "max"], mode),  # monitor_mode returns one of the two
    )
    val_evaluator.add_event_handler(
        Events.COMPLETED(event_filter=event_filter) if event_filter else Events.COMPLETED, stopper
    )
    return stopper


def attach_progress(trainer: Engine, **tqdm_kwargs: Any) -> ProgressBar:
    """Ignite's ``ProgressBar`` showing the running loss: over each epoch's iterations, or over
    the epochs when an epoch is one iteration (so that it moves).

    Written to a file or pipe rather than a terminal, the bar is off (tqdm's ``disable``):
    redraws would interleave with the log lines; the log has a line per epoch.

    Args:
        trainer: the trainer, with a ``running_loss`` metric attached.
        tqdm_kwargs: passed to tqdm, e.g. ``file=`` (default ``sys.stderr``), ``leave=``
            (keep the finished bar; Ignite's ``persist``) or ``disable=`` (overrides the
            terminal check).

    Returns:
        The ``ProgressBar``.

    Example:
        >>> RunningAverage(output_transform=lambda o: o["loss"]).attach(trainer, "running_loss")
        >>> attach_progress(trainer, leave=True)
    """
    import sys  # here: this function's own change (handlers.py is shared)

    persist = bool(tqdm_kwargs.pop("leave", False))  # tqdm's leave is Ignite's persist
    stream = tqdm_kwargs.get("file") or sys.stderr
    if "disable" not in tqdm_kwargs:
        isatty = getattr(stream, "isatty", None)
        tqdm_kwargs["disable"] = not (callable(isatty) and isatty())
    bar = ProgressBar(persist=persist, **tqdm_kwargs)
    attached: list[bool] = []

    def attach_at_start(engine: Engine) -> None:
        if attached:  # a second run() call on the same trainer
            return
        attached.append(True)
        if engine.state.epoch_length == 1:
            bar.attach(
                engine,
                metric_names=["running_loss"],
                event_name=Events.EPOCH_COMPLETED,
                closing_event_name=Events.COMPLETED,
            )
        else:
            bar.attach(engine, metric_names=["running_loss"])

    trainer.add_event_handler(Events.STARTED, attach_at_start)
    return bar


def attach_terminate_on_nan(trainer: Engine) -> TerminateOnNan:
    """Stop at the first non-finite loss (Ignite's ``TerminateOnNan``).

    Attach it before any other handler so that it runs first in the iteration. The
    trainer stops after that iteration, before ``EPOCH_COMPLETED``: no validation and
    no checkpoint see the broken weights.

    Args:
        trainer: the trainer (output ``{"loss": float, ...}``).

    Returns:
        The ``TerminateOnNan`` handler.

    Example:
        >>> attach_terminate_on_nan(trainer)
        >>> trainer.run(loader, max_epochs=10)
        >>> math.isfinite(trainer.state.output["loss"])  # False if it stopped early
    """
    handler = TerminateOnNan(output_transform=lambda o: o["loss"])
    quiet_handler_logger(handler)  # our log setup shows its warning once
    trainer.add_event_handler(Events.ITERATION_COMPLETED, handler)
    return handler


def load_extra_handlers(entries: Sequence[str], trainer: Engine, evaluator: Engine, config: Any) -> list[Callable]:
    """Import ``"package.module:function"`` entries and call each with (trainer, evaluator, config).

    They are attached after every built-in handler, so on a shared event they run last.

    Args:
        entries: ``handlers.extra`` of the config.
        trainer: the trainer.
        evaluator: the validation evaluator.
        config: the validated config.

    Returns:
        The functions called.

    Raises:
        ImportError: an entry cannot be imported. TypeError: it is not callable.

    Example:
        >>> # mypkg/hooks.py: def every_ten(trainer, evaluator, config):
        >>> #     trainer.add_event_handler(Events.EPOCH_COMPLETED(every=10), lambda e: print(e.state.epoch))
        >>> load_extra_handlers(["mypkg.hooks:every_ten"], trainer, evaluator, cfg)
    """
    loaded = []
    for entry in entries:
        module_name, _, attr = entry.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ImportError(f"handlers.extra entry {entry!r} could not be imported: {exc}") from exc
        if not callable(fn):
            raise TypeError(f"handlers.extra entry {entry!r} is not callable.")
        fn(trainer, evaluator, config)
        loaded.append(fn)
    return loaded
