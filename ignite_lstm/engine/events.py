"""The events fired inside one trainer iteration (``TimeEvents``) and the running window count.

``engines.create_trainer`` registers them on every trainer; they live here so that the
factories' module holds the factories.
"""

from __future__ import annotations

import warnings

from ignite.engine import Engine, EventEnum, Events

from ignite_lstm._internal.compat import event_handler_count
from ignite_lstm.engine.attributes import run_state

__all__ = ["TimeEvents", "count_windows", "warn_windowless"]


class TimeEvents(EventEnum):
    """Events fired inside one trainer iteration, around the real computation.

    - ``WINDOW_STARTED`` / ``WINDOW_COMPLETED``: before and after each truncated-BPTT
      window is computed (and, with ``update="window"``, its optimizer step taken), on
      the ``fused`` and ``stepwise`` paths. A handler at ``WINDOW_STARTED`` affects its
      window (the learning-rate schedules rely on it). At ``WINDOW_COMPLETED``
      ``engine.state.window_loss`` holds the window's loss (a 0-dim tensor, no graph; the
      mean over its counted steps, NaN when none counts).
      Not fired on ``fused-detached``, where no window is computed on its own.
    - ``CHUNK_COMPLETED``: after each part of the batch that is computed in one go, on
      every path: a window on ``fused``/``stepwise``, ``chunk_steps`` one-step windows on
      ``fused-detached``. ``engine.state.window_losses`` holds their losses, a (n,)
      tensor without graph, and ``engine.state.window`` the last of them. Loggers of
      window losses listen here (``attach_tensorboard`` does).

    ``engine.state.window`` counts the windows computed since the start of training,
    ``ceil(T / tbptt_steps)`` for a batch of T steps whatever the batches' lengths (one
    per step on ``fused-detached``), which makes ``TimeEvents.WINDOW_COMPLETED(every=100)``
    work. It is a running count in the trainer's ``state_dict`` (a user key), so that a
    checkpoint of ``trainer`` resumes it exactly.
    """

    WINDOW_STARTED = "window_started"
    WINDOW_COMPLETED = "window_completed"
    CHUNK_COMPLETED = "chunk_completed"


def count_windows(trainer: Engine) -> None:
    """``state.window``: a running count of the windows, in the trainer's ``state_dict`` (exact resume)."""
    trainer.register_events(*TimeEvents, event_to_attr={e: "window" for e in TimeEvents})
    run_state(trainer).window = 0
    trainer.state_dict_user_keys.append("window")

    @trainer.on(Events.STARTED)
    def _restart(engine: Engine) -> None:
        if engine.state.iteration == 0:  # a fresh run, not a resumed or continued one
            run_state(engine).window = 0


def warn_windowless(trainer: Engine, path: str) -> bool:
    """Warn when a window-event handler is attached on a path that computes no window on its own.

    Args:
        trainer: a ``create_trainer`` trainer.
        path: its execution path.

    Returns:
        Whether it warned.
    """
    if path != "fused-detached":
        return False
    attached = [
        e.name for e in (TimeEvents.WINDOW_STARTED, TimeEvents.WINDOW_COMPLETED) if event_handler_count(trainer, e)
    ]
    if not attached:
        return False
    warnings.warn(
        f"Handlers are attached to TimeEvents.{' and TimeEvents.'.join(attached)}, which never fire on the "
        f"fused-detached path (tbptt_steps=1, update='sequence': every step is a window, computed "
        f"chunk_steps at a time). Listen to TimeEvents.CHUNK_COMPLETED instead (engine.state.window_losses "
        f"holds the per-step losses), or pass execution='stepwise' to fire them once per step (slower).",
        UserWarning,
        stacklevel=2,
    )
    return True
