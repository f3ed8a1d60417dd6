"""Ignite handlers around the loop, configured from the ``handlers:`` section.

Model selection (best checkpoint, early stopping, plateau schedule) listens to the
*validation* evaluator only; the final train/test evaluations use another one.
Only rank 0 writes files or shows progress.
"""

from __future__ import annotations

import importlib
import logging
import math
from pathlib import Path
from typing import Any, Callable, Mapping

import ignite.distributed as idist
from ignite.contrib.handlers import ProgressBar
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver, EarlyStopping, TerminateOnNan, global_step_from_engine

from ignite_lstm.engines import TimeEvents
from ignite_lstm.metrics import metric_direction

__all__ = ["attach_checkpoints", "attach_early_stopping", "attach_tensorboard", "attach_progress",
           "attach_terminate_on_nan", "load_extra_handlers", "score_function"]

logger = logging.getLogger(__name__)


def score_function(monitor: str) -> Callable[[Engine], float]:
    """Ignite score (higher is better) from the evaluator's metric ``monitor``."""
    sign = -1.0 if metric_direction(monitor) == "min" else 1.0

    def score(engine: Engine) -> float:
        value = float(engine.state.metrics[monitor])
        return sign * value if math.isfinite(value) else -math.inf

    return score


def attach_checkpoints(
    trainer: Engine,
    val_evaluator: Engine,
    to_save: Mapping[str, Any],
    best_objects: Mapping[str, Any],
    directory: str | Path,
    *,
    monitor: str = "mse",
    n_saved: int = 1,
    every: int = 0,
) -> dict[str, Checkpoint]:
    """Best model (by the validation ``monitor``), last training state, and every ``every`` epochs.

    Args:
        trainer: the trainer; file names carry its iteration.
        val_evaluator: the validation evaluator; "best" is decided when it completes.
        to_save: everything needed to continue training.
        best_objects: what the best checkpoint holds (the model and its arguments).
        directory: the checkpoints folder (written atomically, rank 0 only).
        monitor: validation metric name; its direction comes from ``metric_direction``.
        n_saved: files kept of each kind.
        every: also keep a training checkpoint every this many epochs (0: off).

    Returns:
        ``{"best": ..., "last": ..., "epoch": ... (if every), "interrupted": ...}``: the
        ``interrupted`` one is not attached; call it to save on demand.
    """
    saver = DiskSaver(str(directory), atomic=True, create_dir=True, require_empty=False)
    step = global_step_from_engine(trainer, Events.ITERATION_COMPLETED)
    checkpoints = {
        "best": Checkpoint(best_objects, saver, filename_prefix="best", score_function=score_function(monitor),
                           score_name=f"val_{monitor}", n_saved=n_saved, global_step_transform=step),
        "last": Checkpoint(to_save, saver, filename_prefix="last", n_saved=n_saved, global_step_transform=step),
        "interrupted": Checkpoint(to_save, saver, filename_prefix="interrupted", n_saved=1,
                                  global_step_transform=step),
    }
    val_evaluator.add_event_handler(Events.COMPLETED, checkpoints["best"])
    trainer.add_event_handler(Events.EPOCH_COMPLETED, checkpoints["last"])
    if every:
        checkpoints["epoch"] = Checkpoint(to_save, saver, filename_prefix="epoch", n_saved=n_saved,
                                          global_step_transform=step)
        trainer.add_event_handler(Events.EPOCH_COMPLETED(every=every), checkpoints["epoch"])
    return checkpoints


def attach_early_stopping(
    trainer: Engine, val_evaluator: Engine, *, monitor: str, patience: int, min_delta: float = 0.0
) -> EarlyStopping:
    """Ignite's ``EarlyStopping`` on the validation ``monitor`` (direction from the metric)."""
    stopper = EarlyStopping(patience=patience, score_function=score_function(monitor), trainer=trainer,
                            min_delta=min_delta)
    val_evaluator.add_event_handler(Events.COMPLETED, stopper)
    return stopper


def attach_tensorboard(
    trainer: Engine,
    val_evaluator: Engine,
    optimizer,
    log_dir: str | Path,
    *,
    every: int = 1,
    window_every: int = 0,
    histograms: bool = False,
    model=None,
):
    """TensorBoard event files (tensorboardX) through Ignite's ``TensorboardLogger``.

    Tags: ``train/loss`` and ``train/grad_norm`` every ``every`` iterations,
    ``train/window_loss`` every ``window_every`` windows (step = window count),
    ``train/epoch_loss`` and ``val/<metric>`` per epoch, ``lr`` per iteration,
    weight histograms per epoch if asked.
    """
    from ignite.contrib.handlers.tensorboard_logger import (
        OptimizerParamsHandler,
        OutputHandler,
        TensorboardLogger,
        WeightsHistHandler,
    )

    tb = TensorboardLogger(log_dir=str(log_dir))
    tb.attach(trainer, OutputHandler("train", output_transform=lambda o: {"loss": o["loss"], "grad_norm": o["grad_norm"]}),
              Events.ITERATION_COMPLETED(every=every))
    tb.attach(trainer, OutputHandler("train", metric_names=["epoch_loss"]), Events.EPOCH_COMPLETED)
    tb.attach(trainer, OptimizerParamsHandler(optimizer, "lr"), Events.ITERATION_COMPLETED(every=every))
    tb.attach(val_evaluator, OutputHandler("val", metric_names="all", global_step_transform=global_step_from_engine(
        trainer, Events.EPOCH_COMPLETED)), Events.COMPLETED)
    if window_every:
        tb.attach(trainer, OutputHandler("train", output_transform=lambda _: {},
                                         state_attributes=["window_loss"]),
                  TimeEvents.WINDOW_COMPLETED(every=window_every))
    if histograms and model is not None:
        tb.attach(trainer, WeightsHistHandler(model), Events.EPOCH_COMPLETED)
    trainer.add_event_handler(Events.COMPLETED, lambda _: tb.close())
    return tb


def attach_progress(trainer: Engine) -> ProgressBar:
    """Ignite's ``ProgressBar`` with the running loss."""
    bar = ProgressBar(persist=False)
    bar.attach(trainer, metric_names=["running_loss"])
    return bar


def attach_terminate_on_nan(trainer: Engine) -> None:
    """Stop at the first non-finite loss (Ignite's ``TerminateOnNan``).

    Attach it before any other handler so that it runs first in the iteration.
    """
    trainer.add_event_handler(Events.ITERATION_COMPLETED, TerminateOnNan(output_transform=lambda o: o["loss"]))


def load_extra_handlers(entries, trainer: Engine, evaluator: Engine, config) -> list[Callable]:
    """Import ``"package.module:function"`` entries and call each with (trainer, evaluator, config)."""
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


def rank_zero() -> bool:
    return idist.get_rank() == 0
