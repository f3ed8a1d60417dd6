"""TensorBoard event files through Ignite's ``TensorboardLogger``, guarded against a failing disk.

``attach_tensorboard`` logs the training loss, gradient norm and learning rate per
iteration, the window loss per group of windows, the epoch loss and every validation
metric per epoch. tensorboardX writes the event file from a thread of its own; the
guard here (``_KeepWriterError``) turns an error there (a full disk) into an
``OSError`` in the trainer instead of a writer that waits forever.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import global_step_from_engine

from ignite_lstm._internal.compat import close_event_file, wrap_event_file
from ignite_lstm.engine.factories import TimeEvents

__all__ = ["attach_tensorboard"]


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
    epoch_state: Sequence[str] = (),
):
    """TensorBoard event files (tensorboardX) through Ignite's ``TensorboardLogger``.

    Tags and their steps:

    - ``train/loss``, ``train/grad_norm``, ``lr/group_0``: every ``every`` iterations
      (step: iteration);
    - ``train/window_loss``: the mean loss of each group of ``window_every`` windows
      (step: the group's last window; 0: off);
    - ``train/epoch_loss`` and ``val/<metric>`` for every validation metric (step: epoch);
    - ``train/<name>`` for each trainer state attribute of ``epoch_state``, such as the
      curriculum's ``curriculum_length``, at the end of every epoch (step: epoch);
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
        epoch_state: names of ``trainer.state`` attributes logged every epoch.

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
    tb.attach(
        trainer,
        OutputHandler("train", output_transform=lambda o: {"loss": o["loss"], "grad_norm": o["grad_norm"]}),
        Events.ITERATION_COMPLETED(every=every),
    )
    tb.attach(trainer, OptimizerParamsHandler(optimizer, "lr"), Events.ITERATION_COMPLETED(every=every))
    tb.attach(trainer, OutputHandler("train", metric_names=["epoch_loss"]), Events.EPOCH_COMPLETED)
    if epoch_state:
        tb.attach(trainer, OutputHandler("train", state_attributes=list(epoch_state)), Events.EPOCH_COMPLETED)
    tb.attach(
        val_evaluator,
        OutputHandler(
            "val", metric_names="all", global_step_transform=global_step_from_engine(trainer, Events.EPOCH_COMPLETED)
        ),
        Events.COMPLETED,
    )
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
