"""The processes of a run: one, ``nproc_per_node`` spawned ones, or torchrun's; and their signals.

``launch`` runs ``_worker`` in each process through ``idist.Parallel``. Every rank
returns an ``Outcome`` (``training.Outcome``): done, interrupted, diverged, or, for
bad input and a full disk, refused or disk-full; spawned ranks send theirs through
a queue, and ``launch`` returns the one that decides the exit status (the lowest
rank's that is not done, else rank 0's). Nothing typed is raised across processes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import multiprocessing
import os
import queue
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ignite.distributed as idist

from ignite_lstm._internal.compat import engine_logger_name
from ignite_lstm.app.run.rundir import NothingToDo, RunDirError, discard_unused_run_dir, prepare_run
from ignite_lstm.app.run.training import Outcome
from ignite_lstm.app.task.h5io import DataFileError
from ignite_lstm.checkpoint.files import CheckpointMismatch, find_checkpoint

__all__ = ["launch", "setup_logging"]

logger = logging.getLogger("ignite_lstm")

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def setup_logging(rank: int, run_dir: str | None = None) -> None:
    """Log lines to stderr (INFO on rank 0, warnings elsewhere) and to rank 0's ``train.log``."""
    level = logging.INFO if rank == 0 else logging.WARNING
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    root.setLevel(level)
    logging.getLogger("ignite").setLevel(logging.WARNING)  # Engine start/finish lines for every evaluation
    if not any(getattr(h, "_ignite_lstm", False) for h in root.handlers):
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(fmt)
        stream._ignite_lstm = True  # type: ignore[attr-defined]
        root.addHandler(stream)
    if run_dir and rank == 0:
        file_handler = logging.FileHandler(Path(run_dir) / "train.log")
        file_handler.setFormatter(fmt)
        root.addHandler(file_handler)


def _worker(local_rank: int, cfg: Any, stem: str, plan: dict | None, outcomes: Any, launched: bool) -> None:
    """One rank: the run folder under torchrun (rank 0 claims it), logging, ``training.run``, the outcome."""
    from ignite_lstm.app.run.training import run

    own = None  # the plan this process made (torchrun's rank 0): undone if the start-up fails
    try:
        if plan is None:  # started by torchrun: rank 0 chooses the folder for everyone
            text = ""
            if idist.get_rank() == 0:
                try:
                    own = prepare_run(cfg, stem)
                    text = json.dumps(own)
                except NothingToDo as exc:
                    text = json.dumps({"nothing": str(exc)})
                except RunDirError as exc:
                    text = json.dumps({"error": str(exc)})
            plan = json.loads(idist.broadcast(text, src=0, safe_mode=True))
            if "nothing" in plan:  # resume=auto of a finished run: every rank ends with exit status 0
                outcomes.put((idist.get_rank(), Outcome("nothing", plan["nothing"])))
                return
            if "error" in plan:
                raise RunDirError(plan["error"])
        try:
            setup_logging(idist.get_rank(), plan["run_dir"])
            outcome = run(local_rank, cfg, plan["run_dir"], plan["resume_from"], launched=launched)
        except BaseException:
            discard_unused_run_dir(own)
            raise
    except (RunDirError, DataFileError, CheckpointMismatch, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno not in _DISK_FULL:
            raise
        refused = not isinstance(exc, OSError)
        outcomes.put(
            (
                idist.get_rank(),
                Outcome("refused", str(exc)) if refused else Outcome("disk-full", _disk_full_message(exc, plan)),
            )
        )
        if launched:  # the process must fail, so that torch stops the ranks still waiting for this one
            raise
        return
    if outcome.status != "done":
        discard_unused_run_dir(own)
    outcomes.put((idist.get_rank(), outcome))


def _disk_full_message(exc: OSError, plan: dict | None) -> str:
    """A full disk (or quota) during the run: the file, its folder, and the checkpoint to resume from."""
    run_dir = Path(plan["run_dir"]) if plan else None
    target = Path(exc.filename) if exc.filename else None
    folder = target.parent if target else run_dir
    where = f" (folder {folder})" if folder else ""
    text = f"{exc.strerror} while writing {target or 'a file'}{where}; training stopped."
    if run_dir is not None:
        kept = find_checkpoint(run_dir / "checkpoints")
        text += (
            f" The last complete checkpoint is {kept}: free some space, then continue with resume=auto."
            if kept
            else " No checkpoint had been written yet."
        )
    return text


def _reported(outcomes: Any) -> list[tuple[int, Outcome]]:
    reports = []
    while not outcomes.empty():
        reports.append(outcomes.get())
    return sorted(reports, key=lambda r: r[0])


def _deciding(reports: list[tuple[int, Outcome]]) -> Outcome | None:
    """The outcome that decides the exit status: the lowest rank's that is not done, else rank 0's."""
    for _, outcome in reports:
        if outcome.status != "done":
            return outcome
    return reports[0][1] if reports else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Forwarded(KeyboardInterrupt):
    """Raised in the launcher by a first Ctrl-C or SIGTERM, once it is sent on to the spawned ranks."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _QuietAbort(logging.Filter):
    """Leaves out Ignite's error for an Engine run that Ctrl-C or SIGTERM ended ("Engine run is
    terminating due to exception"): ``main`` reports it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR or not isinstance(sys.exc_info()[1], KeyboardInterrupt)


@contextlib.contextmanager
def _launcher_signals(spawned: bool) -> Iterator[None]:
    """SIGTERM handled as Ctrl-C is, and with spawned ranks both forwarded to them, while ``_launch`` runs.

    One process: outside the training loop (inside it ``StopOnInterrupt`` takes both signals),
    SIGTERM raises ``Aborted`` at once, as Ctrl-C raises ``KeyboardInterrupt``. Spawned ranks: the
    first signal is sent on to every rank and raises ``_Forwarded``; the next kills the ranks and
    raises ``Aborted``.
    """
    from ignite_lstm.handlers.interrupts import Aborted

    received: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        received.append(signum)
        if not spawned:
            raise Aborted(signum)
        ranks = multiprocessing.active_children()
        if len(received) > 1:
            for rank in ranks:
                rank.kill()
            for rank in ranks:
                rank.join()
            raise Aborted(signum)
        for rank in ranks:
            with contextlib.suppress(ProcessLookupError):  # it has just ended
                os.kill(rank.pid, signum)
        raise _Forwarded(signum)

    signums = (signal.SIGINT, signal.SIGTERM) if spawned else (signal.SIGTERM,)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, on_signal) for s in signums}
    engine_logger = logging.getLogger(engine_logger_name())
    quiet = _QuietAbort()
    engine_logger.addFilter(quiet)
    try:
        yield
    finally:
        engine_logger.removeFilter(quiet)
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)


def launch(cfg: Any, stem: str, plan: dict | None, nproc: int | None) -> Outcome:
    """Run ``_worker`` here (one process, or one of torchrun's) or on ``nproc`` spawned processes.

    Every rank reports its ``Outcome`` through a queue; the launcher returns the deciding
    one, so that it exits as one process would (0, 1, 2, 3, 130, 143). A Ctrl-C or
    SIGTERM that reaches the launcher is sent on to the ranks (``docker stop`` and Kubernetes
    signal the launcher alone); it then waits until they have stopped at a safe point and saved
    the checkpoint. A second one kills them: the run aborts at once. The ranks count no signal
    twice (``StopOnInterrupt(abort=False)``), also when the whole process group receives it
    (a terminal's Ctrl-C, SLURM): the launcher alone decides to abort.
    """
    from ignite_lstm.handlers.interrupts import Aborted

    d = cfg.distributed
    spawned = bool(nproc)
    outcomes = multiprocessing.get_context("spawn").SimpleQueue() if spawned else queue.SimpleQueue()
    # Ignite's default rendezvous port is a fixed one (2222): a second run on this machine would fail.
    port = _free_port() if spawned and "MASTER_PORT" not in os.environ else None
    with _launcher_signals(spawned=spawned):
        try:
            with idist.Parallel(backend=d.backend, nproc_per_node=nproc, master_port=port) as parallel:
                parallel.run(_worker, cfg, stem, plan, outcomes, spawned)
        except _Forwarded as exc:
            for child in multiprocessing.active_children():
                child.join()
            outcome = _deciding(_reported(outcomes))
            if outcome is None:  # no rank reported: they stopped before training, nothing to save
                raise Aborted(exc.signum) from None
            return outcome
        except Exception:
            outcome = _deciding(_reported(outcomes)) if spawned else None
            if outcome is None:
                raise
            return outcome  # a rank reported why it ended (the others failed with it)
    outcome = _deciding(_reported(outcomes))
    if outcome is None:
        raise RuntimeError("no process reported how the run ended")
    return outcome
