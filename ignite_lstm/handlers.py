"""Ignite handlers around the loop, configured from the ``handlers:`` section.

Model selection (best checkpoint, early stopping, plateau schedule) listens to the
*validation* evaluator only; the final train/test evaluations use another one.
Only rank 0 writes files or shows progress. Checkpoints are in ``checkpointing``,
Ctrl-C and SIGTERM in ``interrupts``.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from ignite.engine import Engine, Events
from ignite.handlers import EarlyStopping, ProgressBar, TerminateOnNan, global_step_from_engine

from ignite_lstm._compat import close_event_file, quiet_handler_logger, wrap_event_file
from ignite_lstm.engines import TimeEvents
from ignite_lstm.metrics import metric_direction

__all__ = ["attach_early_stopping", "attach_tensorboard", "attach_progress", "attach_terminate_on_nan",
           "load_extra_handlers", "score_function", "monitor_mode"]

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
        found = float(engine.state.metrics[monitor])
        return found if math.isfinite(found) else worst

    return value


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
        mode: ``"min"`` (lower is better) or ``"max"``; needed for a metric of your own, whose
            direction ``metric_direction`` does not know (None: the metric's own direction).

    Returns:
        The ``EarlyStopping`` handler (``state_dict``/``load_state_dict`` for checkpoints).

    Example:
        >>> stopper = attach_early_stopping(trainer, evaluator, monitor="mse", patience=10, min_delta=1e-4)
        >>> trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run(val_loader))
    """
    mode = monitor_mode(monitor, mode)
    stopper = EarlyStopping(patience=patience, score_function=_monitored(monitor, mode), trainer=trainer,
                            threshold=min_delta, cumulative=True, mode=mode)
    val_evaluator.add_event_handler(Events.COMPLETED, stopper)
    return stopper


class _KeepWriterError:
    """Stands in for tensorboardX's ``EventsWriter`` (the event file) and keeps its first error.

    tensorboardX writes the event file from a thread of its own, fed by a queue of ten
    events. An error there (a full disk) ends that thread, and then the next ``add_*``
    waits forever for room in the queue, and so does ``close`` at exit. Kept here
    instead, the thread goes on emptying the queue (later events are dropped) and
    ``check`` raises the error in the training thread.
    """

    def __init__(self, events: Any, path: str) -> None:
        self._events = events
        self.path = path
        self.error: Exception | None = None

    def _call(self, method: Callable, *args: Any) -> None:
        if self.error is None:
            try:
                method(*args)
            except Exception as exc:
                self.error = exc

    def write_event(self, event: Any) -> None:
        self._call(self._events.write_event, event)

    def flush(self) -> None:
        self._call(self._events.flush)

    def close(self) -> None:
        self._call(self._events.close)
        if self.error is not None:  # its flush failed before the file was closed: close it, dropping the rest
            with contextlib.suppress(Exception):
                close_event_file(self._events)

    def check(self, *_: Any) -> None:
        """Raise the kept error (an ``OSError`` names the event file)."""
        exc = self.error
        if isinstance(exc, OSError) and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, self.path) from exc
        if exc is not None:
            raise RuntimeError(f"TensorBoard could not write {self.path}: {exc}") from exc


def attach_tensorboard(
    trainer: Engine,
    val_evaluator: Engine,
    optimizer: torch.optim.Optimizer,
    log_dir: str | Path,
    *,
    every: int = 1,
    window_every: int = 0,
    histograms: bool = False,
    model: torch.nn.Module | None = None,
):
    """TensorBoard event files (tensorboardX) through Ignite's ``TensorboardLogger``.

    Tags and their steps:

    - ``train/loss``, ``train/grad_norm``, ``lr/group_0``: every ``every`` iterations
      (step: iteration);
    - ``train/window_loss``: the mean loss of each group of ``window_every`` windows
      (step: the group's last window; 0: off);
    - ``train/epoch_loss`` and ``val/<metric>`` for every validation metric (step: epoch);
    - ``weights/...`` histograms per epoch if ``histograms``.

    Args:
        trainer: the trainer from ``create_trainer`` (output ``{"loss", "grad_norm"}``; an
            ``epoch_loss`` metric attached for the per-epoch loss).
        val_evaluator: the validation evaluator.
        optimizer: whose learning rate is logged.
        log_dir: the event files' folder.
        every: iterations between training-loss, gradient-norm and lr points.
        window_every: windows per ``train/window_loss`` point (0: off).
        histograms: also log weight histograms of ``model`` per epoch.
        model: the model for the histograms.

    A failure to write the event file (a full disk) is raised in the trainer at the
    end of the iteration or epoch (an ``OSError`` naming the file); tensorboardX's
    writer thread would otherwise die and leave the next write waiting forever.

    Returns:
        The ``TensorboardLogger`` (closed when the trainer completes).

    Example:
        >>> attach_tensorboard(trainer, evaluator, optimizer, "run/tb", every=10, window_every=100)
        >>> trainer.run(loader, max_epochs=20)  # then: tensorboard --logdir run/tb
    """
    from ignite.handlers.tensorboard_logger import (
        OptimizerParamsHandler,
        OutputHandler,
        TensorboardLogger,
        WeightsHistHandler,
    )

    tb = TensorboardLogger(log_dir=str(log_dir))
    guard = wrap_event_file(tb.writer, _KeepWriterError)  # None: not tensorboardX's writer
    if guard is not None:
        trainer.add_event_handler(Events.ITERATION_COMPLETED | Events.EPOCH_COMPLETED, guard.check)
    tb.attach(trainer, OutputHandler("train", output_transform=lambda o: {"loss": o["loss"],
                                                                         "grad_norm": o["grad_norm"]}),
              Events.ITERATION_COMPLETED(every=every))
    tb.attach(trainer, OptimizerParamsHandler(optimizer, "lr"), Events.ITERATION_COMPLETED(every=every))
    tb.attach(trainer, OutputHandler("train", metric_names=["epoch_loss"]), Events.EPOCH_COMPLETED)
    tb.attach(val_evaluator, OutputHandler("val", metric_names="all", global_step_transform=global_step_from_engine(
        trainer, Events.EPOCH_COMPLETED)), Events.COMPLETED)
    if window_every:
        group = {"sum": 0.0, "n": 0}

        def window_group(engine: Engine) -> None:
            # CHUNK_COMPLETED: the losses of windows (last - n, last], on every execution path.
            losses, last = engine.state.window_losses, engine.state.window
            first, i = last - losses.numel() + 1, 0
            while i < losses.numel():
                end = min(losses.numel(), i + window_every - (first + i - 1) % window_every)  # next group boundary
                group["sum"] = group["sum"] + losses[i:end].sum()  # a 0-dim tensor: no sync per window
                group["n"] += end - i
                if (first + end - 1) % window_every == 0:
                    tb.writer.add_scalar("train/window_loss", float(group["sum"]) / group["n"], first + end - 1)
                    group["sum"], group["n"] = 0.0, 0
                i = end

        trainer.add_event_handler(TimeEvents.CHUNK_COMPLETED, window_group)
    if histograms and model is not None:
        tb.attach(trainer, WeightsHistHandler(model), Events.EPOCH_COMPLETED)

    def close(_: Engine) -> None:
        tb.close()
        if guard is not None:
            guard.check()  # the last events could not be written

    trainer.add_event_handler(Events.COMPLETED, close)
    return tb


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
    attached = []

    def attach_at_start(engine: Engine) -> None:
        if attached:  # a second run() call on the same trainer
            return
        attached.append(True)
        if engine.state.epoch_length == 1:
            bar.attach(engine, metric_names=["running_loss"], event_name=Events.EPOCH_COMPLETED,
                       closing_event_name=Events.COMPLETED)
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
