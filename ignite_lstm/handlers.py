"""Ignite handlers around the loop, configured from the ``handlers:`` section.

Model selection (best checkpoint, early stopping, plateau schedule) listens to the
*validation* evaluator only; the final train/test evaluations use another one.
Only rank 0 writes files or shows progress.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import signal
import threading
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver, EarlyStopping, ProgressBar, TerminateOnNan, global_step_from_engine

from ignite_lstm._atomic import atomic_write
from ignite_lstm._compat import close_event_file, quiet_handler_logger, wrap_event_file
from ignite_lstm.engines import TimeEvents
from ignite_lstm.metrics import metric_direction

__all__ = ["attach_checkpoints", "checkpointer_states", "attach_early_stopping", "attach_tensorboard",
           "attach_progress", "attach_terminate_on_nan", "load_extra_handlers", "score_function", "StopOnInterrupt",
           "Aborted", "signal_label", "TRAINING_KINDS"]

logger = logging.getLogger(__name__)

TRAINING_KINDS = ("last", "epoch", "interrupted")  # checkpoint files that hold everything needed to continue


def score_function(monitor: str) -> Callable[[Engine], float]:
    """Ignite score (higher is better) from the evaluator's metric ``monitor``; NaN/inf scores lowest."""
    sign = -1.0 if metric_direction(monitor) == "min" else 1.0

    def score(engine: Engine) -> float:
        value = float(engine.state.metrics[monitor])
        return sign * value if math.isfinite(value) else -math.inf

    return score


class _SaveThenRemove(DiskSaver):
    """``DiskSaver`` that deletes the file a new one replaces only once the new one is written.

    Ignite's ``Checkpoint`` removes the oldest file before saving the next; if that save
    fails (a full disk), the run would be left without its last good checkpoint. Files are
    written by ``atomic_write``: with the umask's mode (Ignite's temporary file makes them
    0644 whatever the umask), and a failed write leaves no temporary file behind.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: list[str] = []

    def remove(self, filename: str) -> None:
        self._pending.append(filename)

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        pending, self._pending = self._pending, []
        if idist.get_rank() == self.save_on_rank:  # on failure the old files stay
            atomic_write(self.dirname / filename, lambda f: torch.save(checkpoint, f, **self.kwargs))
        for old in pending:
            if old != filename and (self.dirname / old).exists():
                super().remove(old)


def attach_checkpoints(
    trainer: Engine,
    val_evaluator: Engine,
    to_save: dict[str, Any],
    best_objects: Mapping[str, Any],
    directory: str | Path,
    *,
    enabled: bool = True,
    monitor: str = "mse",
    n_saved: int = 1,
    every: int = 0,
) -> dict[str, Checkpoint]:
    """Best model (by the validation ``monitor``), last training state, every ``every`` epochs, and Ctrl-C.

    Files go to ``directory`` through a ``DiskSaver`` that writes a temporary file and
    renames it into place (a crash never leaves a half-written checkpoint, a failed
    write no temporary file; the mode follows the umask), rank 0 only; a file replaced
    by a newer one is deleted after the newer one is written, so a failed save keeps
    the previous file:

    - ``best_checkpoint_<iteration>_<score>.pt``: ``best_objects`` (model and its
      arguments, readable by ``load_model``) after each validation that beats the
      ``n_saved`` best so far. The score is the metric, negated for a metric where
      lower is better (``neg_val_mse=-0.0123``).
    - ``last_checkpoint_<iteration>.pt``: ``to_save`` after every epoch.
    - ``epoch_checkpoint_<iteration>.pt``: ``to_save`` every ``every`` epochs (0: off).
    - ``interrupted_checkpoint_<iteration>.pt``: ``to_save``, written on demand by
      calling ``checkpoints["interrupted"](trainer)`` (also when ``enabled`` is False).

    Every training file also holds each saver's list of files (``checkpointer`` for
    its own, ``checkpointer_<kind>`` for the others), so that a resumed run keeps
    counting ``n_saved`` and removes the files of the run it continues.

    Args:
        trainer: the trainer; file names carry its iteration.
        val_evaluator: the validation evaluator; "best" is decided when it completes.
        to_save: everything needed to continue training (not modified).
        best_objects: what the best checkpoint holds.
        directory: the checkpoints folder.
        enabled: False: only the on-demand ``interrupted`` saver.
        monitor: validation metric name; its direction comes from ``metric_direction``.
        n_saved: files kept of each kind.
        every: also keep a training checkpoint every this many epochs (0: off).

    Returns:
        ``{"best", "last", "epoch" (if every), "interrupted"}`` -> ``Checkpoint``.

    Example:
        >>> to_save = {"model": model, "optimizer": optimizer, "trainer": trainer}
        >>> checkpoints = attach_checkpoints(trainer, evaluator, to_save, {"model": model}, "run/checkpoints",
        ...                                  monitor="snr", n_saved=2, every=10)
        >>> trainer.run(loader, max_epochs=50)
        >>> checkpoints["best"].last_checkpoint  # the highest validation SNR
    """
    if not isinstance(n_saved, int) or n_saved < 1:
        raise ValueError(f"Argument n_saved should be a positive integer, got {n_saved!r}.")
    if not isinstance(every, int) or every < 0:
        raise ValueError(f"Argument every should be a non-negative integer, got {every!r}.")
    saver = _SaveThenRemove(str(directory), atomic=True, create_dir=True, require_empty=False)
    step = global_step_from_engine(trainer, Events.ITERATION_COMPLETED)
    kinds = [k for k in TRAINING_KINDS if enabled and (k != "epoch" or every) or k == "interrupted"]
    files: dict[str, dict[str, Any]] = {kind: dict(to_save) for kind in kinds}
    checkpoints: dict[str, Checkpoint] = {
        kind: Checkpoint(files[kind], saver, filename_prefix=kind, n_saved=1 if kind == "interrupted" else n_saved,
                         global_step_transform=step, include_self=True)
        for kind in kinds
    }
    if enabled:
        sign = "" if metric_direction(monitor) == "max" else "neg_"
        checkpoints["best"] = Checkpoint(best_objects, saver, filename_prefix="best",
                                         score_function=score_function(monitor), score_name=f"{sign}val_{monitor}",
                                         n_saved=n_saved, global_step_transform=step)
    for kind in kinds:  # the other savers' bookkeeping, read when the file is saved
        files[kind].update({f"checkpointer_{k}": c for k, c in checkpoints.items() if k != kind})
    if enabled:
        val_evaluator.add_event_handler(Events.COMPLETED, checkpoints["best"])
        if every:  # before "last", so that the last file knows about this epoch's file
            trainer.add_event_handler(Events.EPOCH_COMPLETED(every=every), checkpoints["epoch"])
        trainer.add_event_handler(Events.EPOCH_COMPLETED, checkpoints["last"])
    return checkpoints


def checkpointer_states(checkpoints: Mapping[str, Checkpoint], checkpoint: Mapping[str, Any]) -> None:
    """Give each saver its list of files from a training checkpoint (see ``attach_checkpoints``)."""
    for kind, saver in checkpoints.items():
        state = checkpoint.get(f"checkpointer_{kind}", checkpoint.get("checkpointer"))
        if state is not None:
            saver.load_state_dict(state)


def attach_early_stopping(
    trainer: Engine, val_evaluator: Engine, *, monitor: str, patience: int, min_delta: float = 0.0
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

    Returns:
        The ``EarlyStopping`` handler (``state_dict``/``load_state_dict`` for checkpoints).

    Example:
        >>> stopper = attach_early_stopping(trainer, evaluator, monitor="mse", patience=10, min_delta=1e-4)
        >>> trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run(val_loader))
    """
    mode = metric_direction(monitor)

    def score(engine: Engine) -> float:
        value = float(engine.state.metrics[monitor])
        return value if math.isfinite(value) else (math.inf if mode == "min" else -math.inf)

    stopper = EarlyStopping(patience=patience, score_function=score, trainer=trainer, threshold=min_delta,
                            cumulative=True, mode=mode)
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
    """Ignite's ``ProgressBar`` over each epoch's iterations, showing the running loss.

    Args:
        trainer: the trainer, with a ``running_loss`` metric attached.
        tqdm_kwargs: passed to tqdm, e.g. ``file=``.

    Returns:
        The ``ProgressBar``.

    Example:
        >>> RunningAverage(output_transform=lambda o: o["loss"]).attach(trainer, "running_loss")
        >>> attach_progress(trainer)
    """
    bar = ProgressBar(persist=False, **tqdm_kwargs)
    bar.attach(trainer, metric_names=["running_loss"])
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


def signal_label(signum: int) -> str:
    """How the messages name a signal: ``"Ctrl-C"`` for SIGINT, else its name (``"SIGTERM"``)."""
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


class Aborted(KeyboardInterrupt):
    """A second Ctrl-C or SIGTERM: the run stops at once, without a new checkpoint.

    A ``KeyboardInterrupt``, so that it unwinds like Ctrl-C does; ``signum`` is the signal.
    """

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(int(signum))
        self.signum = int(signum)

    def __str__(self) -> str:
        return signal_label(self.signum)


class StopOnInterrupt:
    """Ctrl-C (SIGINT) or SIGTERM stops the trainer at the next safe point instead of mid-step.

    The first signal only sets ``trainer.state.interrupt_requested`` (and ``signum``). The
    trainer stops after the current iteration, or, when that iteration is the last of its
    epoch, after the epoch's handlers (validation, checkpoints), so that no epoch ends without
    them. With several processes the request (and which signal made it) is shared at each
    check, so that all stop at the same iteration. A second signal raises ``Aborted`` (a
    ``KeyboardInterrupt``).

    With ``abort=False`` (a process spawned by a launcher that forwards its signals to it,
    and that ends the run itself on a second one) a second signal changes nothing: with a
    signal sent to the whole process group (as SLURM does) each process receives it twice,
    once directly and once forwarded. ``close`` then leaves both signals ignored, so that a
    late forwarded copy cannot kill the process while it saves its checkpoint.

    Only the main thread can own the signal handlers; elsewhere this is inert.

    Args:
        trainer: the trainer to stop.
        abort: False: a second signal does not abort (see above).

    Example:
        >>> interrupt = StopOnInterrupt(trainer)
        >>> try:
        ...     trainer.run(loader, max_epochs=10)
        ... finally:
        ...     interrupt.close()
        >>> interrupt.requested, interrupt.signum  # (True, signal.SIGTERM) after a SIGTERM
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, trainer: Engine, *, abort: bool = True) -> None:
        self.trainer = trainer
        self.abort = abort
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        trainer.state.interrupt_requested = False
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._on_signal) for s in self.SIGNALS}
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._at_iteration)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._at_epoch)

    @property
    def requested(self) -> bool:
        return bool(self.trainer.state.interrupt_requested)

    @property
    def label(self) -> str:
        """The signal that asked to stop, as the messages name it (``"Ctrl-C"``, ``"SIGTERM"``)."""
        return signal_label(self.signum or signal.SIGINT)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.requested:
            if self.abort:
                raise Aborted(signum)
            return
        self.signum = signum
        self.trainer.state.interrupt_requested = True
        again = "press again" if signum == signal.SIGINT else "send it again"
        logger.warning("%s: stopping after this iteration and saving a checkpoint (%s to abort).",
                       signal_label(signum), again)

    def _shared(self) -> bool:
        if idist.get_world_size() == 1:
            return self.requested
        # The largest signal number asked for, on any process. A signal that arrives during the
        # reduction counts at the next check, so that every process decides on the same value.
        shared = int(idist.all_reduce(self.signum or 0, op="MAX"))
        if shared and not self.requested:
            self.signum = shared
            self.trainer.state.interrupt_requested = True
        return bool(shared)

    def _at_iteration(self, engine: Engine) -> None:
        if engine.state.iteration % engine.state.epoch_length and self._shared():
            engine.terminate()

    def _at_epoch(self, engine: Engine) -> None:
        if self._shared():
            engine.terminate()

    def close(self) -> None:
        """Give SIGINT and SIGTERM back to the handlers that were there before (``abort=False``: ignore them)."""
        for signum, previous in self._previous.items():
            if not self.abort:
                signal.signal(signum, signal.SIG_IGN)
            elif previous is not None:  # None: not set from Python, nothing to give back
                signal.signal(signum, previous)
        self._previous = {}


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
