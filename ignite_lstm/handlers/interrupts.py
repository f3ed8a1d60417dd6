"""Ctrl-C and SIGTERM during training: stop at the next safe point, abort on a second signal.

``StopOnInterrupt`` is the handler; ``Aborted`` what a second signal raises;
``signal_label`` how the messages name a signal.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import ignite.distributed as idist
from ignite.engine import Engine, Events

__all__ = ["StopOnInterrupt", "Aborted", "signal_label"]

logger = logging.getLogger(__name__)


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
        logger.warning(
            "%s: stopping after this iteration and saving a checkpoint (%s to abort).", signal_label(signum), again
        )

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
