"""StopOnInterrupt in this process: real SIGINT and SIGTERM stop the trainer at a safe point, a second aborts.

The same signals sent to a ``run.py`` subprocess, on one and on two processes, are in ``test_faults.py``.
"""

import os
import signal

import pytest
from ignite.engine import Engine, Events

from ignite_lstm.handlers.interrupts import StopOnInterrupt


@pytest.fixture
def sigterm_guard():
    """A SIGTERM that nothing else handles fails the test (instead of ending pytest); both signals'
    handlers are given back afterwards."""

    def unhandled(signum, frame):
        pytest.fail("SIGTERM reached the test's own handler")

    previous = {
        s: signal.signal(s, unhandled if s == signal.SIGTERM else signal.getsignal(s))
        for s in (signal.SIGINT, signal.SIGTERM)
    }
    yield
    for s, handler in previous.items():
        signal.signal(s, handler)


def _signalled_run(signals: list[int], at: int, **options):
    """3 iterations per epoch, 3 epochs; the real ``signals`` sent to this process at the end of iteration ``at``;
    ``options`` for ``StopOnInterrupt``. Returns the trainer, the handler and the epochs completed."""
    trainer = Engine(lambda e, b: None)
    epochs_done = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: epochs_done.append(e.state.epoch))

    @trainer.on(Events.ITERATION_COMPLETED(once=at))
    def _send(_):
        for signum in signals:
            os.kill(os.getpid(), signum)

    previous = {s: signal.getsignal(s) for s in StopOnInterrupt.SIGNALS}
    stop = StopOnInterrupt(trainer, **options)
    try:
        trainer.run(range(3), max_epochs=3)
    finally:
        stop.close()
    if stop.abort:  # given back (abort=False leaves them ignored)
        assert {s: signal.getsignal(s) for s in previous} == previous
    return trainer, stop, epochs_done


# --- Ctrl-C ----------------------------------------------------------------------------------------------


def test_ctrl_c_mid_epoch_stops_after_the_current_iteration():
    trainer, stop, epochs_done = _signalled_run([signal.SIGINT], at=5)
    assert stop.requested and trainer.state.interrupt_requested
    assert trainer.state.iteration == 5 and epochs_done == [1]  # epoch 2 stopped before its end


def test_ctrl_c_in_the_last_iteration_of_an_epoch_lets_the_epoch_handlers_run_first():
    trainer, stop, epochs_done = _signalled_run([signal.SIGINT], at=6)
    assert stop.requested and trainer.state.iteration == 6 and epochs_done == [1, 2]


def test_a_second_ctrl_c_aborts_at_once():
    with pytest.raises(KeyboardInterrupt):
        _signalled_run([signal.SIGINT, signal.SIGINT], at=2)


# --- SIGTERM ---------------------------------------------------------------------------------------------


def test_sigterm_stops_the_trainer_after_the_current_iteration_and_a_second_aborts(sigterm_guard):
    trainer, stop, _ = _signalled_run([signal.SIGTERM], at=5)
    assert trainer.state.iteration == 5 and stop.requested and stop.signum == signal.SIGTERM
    assert stop.label == "SIGTERM"
    with pytest.raises(KeyboardInterrupt) as aborted:  # interrupts.Aborted
        _signalled_run([signal.SIGTERM, signal.SIGTERM], at=2)
    assert aborted.value.signum == signal.SIGTERM and str(aborted.value) == "SIGTERM"


def test_a_rank_of_a_launcher_counts_no_signal_twice_and_then_ignores_them(sigterm_guard):
    """abort=False: the launcher forwards its signals and aborts by itself; a group signal reaches
    the rank twice. After close, a late copy must not end the process while it saves the checkpoint."""
    trainer, stop, _ = _signalled_run([signal.SIGTERM, signal.SIGTERM, signal.SIGINT], at=5, abort=False)
    assert trainer.state.iteration == 5 and stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    os.kill(os.getpid(), signal.SIGTERM)  # ignored
    os.kill(os.getpid(), signal.SIGINT)
