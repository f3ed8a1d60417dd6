"""Where a study lives and who works on it: storages, the workers' lock, dead workers, heartbeats.

A storage is any database URL (``sqlite:///study.db``, ``postgresql://...``: its driver is
the ``postgres`` extra, ``psycopg2-binary``) or ``journal:PATH`` (Optuna's journal file). Workers on
one machine take a file lock beside a storage file to count the trials and start one
atomically, so together they stop at exactly ``tune.trials``. Each trial records its
worker (host, pid, process start time): a trial whose worker on this machine has died is
marked failed by the next worker that looks; on a database server, a trial whose worker
(on any machine) has sent no heartbeat for ``GRACE_S`` seconds is. Such a trial's finished
repeats are not lost: its parameters are enqueued again, and the retry reuses them.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

__all__ = [
    "StudyError",
    "create_study",
    "fail_dead_trials",
    "heartbeat",
    "lock_file",
    "locked",
    "open_storage",
    "retry_failed",
    "shown_url",
    "tell",
    "worker_id",
]

logger = logging.getLogger("ignite_lstm.search")
# the drivers of the database URLs, by the module SQLAlchemy imports: what to install
DRIVERS = {
    "psycopg2": "psycopg2-binary (pip install 'ignite_lstm[postgres]')",
    "MySQLdb": "mysqlclient (or use mysql+pymysql:// with PyMySQL)",
    "pymysql": "PyMySQL",
}
HEARTBEAT_S, GRACE_S = 60, 300  # database servers: a trial silent for GRACE_S is failed by other workers


class StudyError(ValueError):
    """The study cannot be opened or continued (storage unreachable, other direction)."""


def shown_url(url: str) -> str:
    """A storage URL fit to print: a database password is shown as ``***``."""
    if "://" not in url:
        return url
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def open_storage(url: str, key: str = "storage") -> Any:
    """Open an Optuna storage: ``journal:PATH`` or a database URL (SQLite: no heartbeats; servers: heartbeats).

    Raises:
        StudyError: naming ``key``, the URL (password hidden) and the reason; a missing database
            driver is named with the package to install.
    """
    import optuna

    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            return JournalStorage(JournalFileBackend(url[len("journal:") :]))
        if url.startswith("sqlite"):  # one machine: a dead worker's trials are found by their pid
            return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
    except Exception as exc:  # a wrong URL, an unreachable server, a missing driver or folder
        missing = _missing_module(exc)
        if missing is not None:  # SQLAlchemy imports the URL's driver; Optuna wraps the ImportError
            package = DRIVERS.get(missing.split(".")[0], missing)
            raise StudyError(
                f"{key}: cannot open {shown_url(url)}: its database driver {missing!r} is not installed; "
                f"install {package}"
            ) from exc
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StudyError(f"{key}: cannot open {shown_url(url)}: {reason}") from exc


def _missing_module(exc: BaseException | None) -> str | None:
    """The name of the module whose import failed somewhere in ``exc``'s chain of causes, or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            return exc.name
        exc = exc.__cause__ or exc.__context__
    return None


def lock_file(url: str) -> Path | None:
    """A file lock that makes "count the trials, then start one" atomic among this machine's workers."""
    if url.startswith("journal:"):
        return Path(url[len("journal:") :] + ".tune-lock")
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///") :] + ".tune-lock")
    return None  # a database server: workers may overshoot tune.trials by one in a rare race


@contextlib.contextmanager
def locked(path: Path | None) -> Iterator[None]:
    """Hold the workers' lock (an exclusive ``flock`` on ``path``); no lock for ``None``."""
    if path is None:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def create_study(url: str, name: str, direction: str, key: str = "storage") -> tuple[Any, Any, Path | None]:
    """Create or load (``load_if_exists``) the study ``name`` in the storage at ``url``; refuse the other direction.

    Returns:
        ``(study, storage, lock_file)``.

    Raises:
        StudyError: naming ``key`` and the storage URL.
    """
    import optuna

    lock = lock_file(url)
    try:
        with locked(lock):  # workers started at once would race to create the tables and the study
            storage = open_storage(url, key)
            study = optuna.create_study(
                study_name=name, storage=storage, direction=cast(Any, direction), load_if_exists=True
            )
    except OSError as exc:  # the lock file beside the storage file
        raise StudyError(f"{key}: cannot open {shown_url(url)}: {exc.strerror or exc} ({exc.filename})") from exc
    if study.direction.name.lower() != direction:
        raise StudyError(
            f"{key.rpartition('.')[0] + '.' if '.' in key else ''}direction: study {name!r} in {shown_url(url)} was "
            f"created to {study.direction.name.lower()}, not {direction}; use another study name"
        )
    return study, storage, lock


def _process_start(pid: int) -> str | None:
    """The kernel's start time of a process (tells a reused pid apart), or None; "Z" for a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return "Z" if fields[0] == "Z" else fields[19]


def worker_id() -> str:
    """``host:pid:start`` of this process, recorded in each trial it runs."""
    return f"{socket.gethostname()}:{os.getpid()}:{_process_start(os.getpid()) or ''}"


def _alive(worker: str) -> bool:
    host, pid, start = worker.rsplit(":", 2)
    if host != socket.gethostname():
        return True  # another machine's worker: the heartbeat tells (database storages)
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now = _process_start(int(pid))
    return now != "Z" and (not start or now is None or now == start)


def fail_dead_trials(study: Any, storage: Any) -> None:
    """Mark failed the running trials whose worker has died (this machine) or sent no heartbeat (servers).

    Such a trial with finished repeats is enqueued again with its parameters (``retry_failed``):
    the next trial the workers start retries it and reuses those repeats.
    """
    import optuna
    from optuna.trial import TrialState

    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # heartbeats older than GRACE_S (database storages)
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if t.number in running:  # stale: its finished repeats are reused by a retry of its parameters
            retry_failed(study, t)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker")
        if worker and not _alive(worker):
            trial_id = storage.get_trial_id_from_study_id_trial_number(
                storage.get_study_id_from_name(study.study_name), t.number
            )
            storage.set_trial_user_attr(trial_id, "fail_reason", f"its worker (pid {worker.split(':')[1]}) died")
            tell(study, t.number, state=TrialState.FAIL, skip_if_finished=True)
            logger.warning("Trial %d: its worker (pid %s) died; marked failed", t.number, worker.split(":")[1])
            retry_failed(study, t)


@contextlib.contextmanager
def heartbeat(storage: Any, study: Any, number: int) -> Iterator[None]:
    """While a trial runs, record its heartbeat every ``HEARTBEAT_S`` seconds (database servers only)."""
    if getattr(storage, "heartbeat_interval", None) is None:  # SQLite and journal files: pids tell
        yield
        return
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)
    stop = threading.Event()

    def beat() -> None:
        while True:
            storage.record_heartbeat(trial_id)
            if stop.wait(HEARTBEAT_S):
                return

    thread = threading.Thread(target=beat, daemon=True, name=f"tune-heartbeat-{number}")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def tell(study: Any, *args: Any, **kwargs: Any) -> None:
    """``study.tell``, outside ``Study.optimize``.

    The grid sampler asks the study to stop once its grid is done, which only ``optimize``
    can; the trial is stored before that, and the workers stop by their own count.
    """
    try:
        study.tell(*args, **kwargs)
    except RuntimeError as exc:
        if "Study.stop" not in str(exc):
            raise


def retry_failed(study: Any, trial: Any) -> bool:
    """Enqueue again the parameters of a failed ``trial`` that has finished repeats, for them to be reused.

    Returns:
        True when it was enqueued (the next ``study.ask()`` takes it, with ``retry_of`` set).
    """
    if not [r for r in trial.user_attrs.get("repeats", []) if r.get("value") is not None] or not trial.params:
        return False
    study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})
    logger.info("Trial %d: its parameters are enqueued again, to reuse its finished repeats", trial.number)
    return True
