"""Helpers for the run-management tests: tiny configs, CLI runs, fault injection.

The ``handlers.extra`` entries here (``handler_helpers:pause``, ``...:nan_batch``,
``...:scripted_metric``) are read from environment variables so that they work in
a subprocess of ``run.py`` as well as in-process; each acts at one exact iteration
or epoch, so the tests never depend on timing.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
CONFIG = str(REPO / "configs" / "base.yaml")

# 8 training sequences of 200 steps, batch 4: 2 iterations per epoch, 4 windows of 50 steps each
# (update=window: 8 optimizer steps per epoch). Two layers with dropout, so that an exact resume
# needs the random generators restored.
TINY = [
    "data.duration=0.2",
    "data.train.mixtures=2",
    "model.hidden_size=8",
    "model.num_layers=2",
    "model.dropout=0.3",
    "train.epochs=4",
    "train.batch_size=4",
    "train.tbptt_steps=50",
    "eval.batch_size=8",
    "threads=1",
    "handlers.progress_bar=false",
    "handlers.lr_scheduler.name=cosine",
    "handlers.lr_scheduler.warmup_epochs=1",
    "handlers.early_stopping.enabled=true",
    "handlers.early_stopping.patience=10",
]
ITERATIONS_PER_EPOCH = 2


def tiny_args(data_dir: Path, output_dir: Path, name: str, *extra: str) -> list[str]:
    """``run.py`` arguments: the base config with the tiny overrides, one run folder."""
    return [CONFIG, *TINY, f"data.dir={data_dir}", f"output_dir={output_dir}", f"name={name}", *extra]


def run_in_process(main: Any, args: Sequence[str]) -> int:
    """A command's ``main(args)`` in this process; the log handlers it adds are removed afterwards."""
    root = logging.getLogger()
    before, threads = list(root.handlers), torch.get_num_threads()
    try:
        return main([str(a) for a in args])
    finally:
        for handler in root.handlers[:]:
            if handler not in before:
                root.removeHandler(handler)
                handler.close()
        torch.set_num_threads(threads)


def run_cli(args: Sequence[str]) -> int:
    """``ignite_lstm.app.cli.main`` in this process (``run_in_process``)."""
    from ignite_lstm.app.cli import main

    return run_in_process(main, args)


def unwritable_folder(tmp_path: Path, name: str) -> Path:
    """A folder path ``.../name`` that cannot be created or written, whatever the user (root ignores mode
    bits): under a read-only folder where that holds, else under a regular file."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        (locked / "probe").mkdir()
    except PermissionError:
        return locked / name
    (locked / "probe").rmdir()
    locked.chmod(0o700)
    afile = tmp_path / "afile"
    afile.write_text("a regular file, not a folder\n")
    return afile / name  # mkdir fails with NotADirectoryError


def run_cli_in(args: Sequence[str | Path], cwd: str | Path) -> subprocess.CompletedProcess:
    """``run_cli`` in the folder ``cwd``, with its stdout and stderr captured: what ``python run.py ARGS``
    run there would return, without starting a process (the logging set-up is undone afterwards)."""
    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    levels = {name: logging.getLogger(name).level for name in ("", "ignite")}
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run_cli([str(a) for a in args])
    finally:
        os.chdir(here)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    return subprocess.CompletedProcess([str(a) for a in args], code, out.getvalue(), err.getvalue())


def spawn_cli(args: Sequence[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """``python run.py ARGS`` as a real subprocess, its output in ``log``, this folder importable
    for ``handlers.extra``."""
    full_env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, str(REPO / "run.py"), *args],
            cwd=REPO,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )


def wait_for(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 300.0) -> None:
    """Wait until ``path`` exists; fail with the process's output if it ends first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run.py ended (exit {proc.returncode}) before {path.name}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {path}:\n{log.read_text()}")
        time.sleep(0.05)


_REFERENCE: dict[str, Path] = {}


def reference_run(tmp_path_factory) -> Path:
    """The run folder of the tiny config trained without interruption (once per test session)."""
    if "run_dir" not in _REFERENCE:
        root = tmp_path_factory.mktemp("reference")
        assert run_cli(tiny_args(root / "data", root / "runs", "reference")) == 0
        _REFERENCE["run_dir"] = root / "runs" / "reference"
    return _REFERENCE["run_dir"]


@dataclass
class Background:
    """A ``run.py`` subprocess of the tiny config that pauses at the end of iteration ``pause_at``."""

    proc: subprocess.Popen
    data_dir: Path
    output_dir: Path
    name: str
    marker: Path
    log: Path

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.name

    def wait_until_paused(self) -> None:
        wait_for(self.marker, self.proc, self.log)


KILL_AT = 2 * ITERATIONS_PER_EPOCH + 1  # SIGKILL in the first iteration of epoch 3 (test_resume)
INTERRUPT_AT = ITERATIONS_PER_EPOCH + 1  # Ctrl-C in the first of epoch 2's two iterations (test_faults)
_BACKGROUND: dict[str, Background] = {}


def background_runs(tmp_path_factory) -> dict[str, Background]:
    """The subprocess runs of test_resume ("killed") and test_faults ("ctrl_c"), both started on first use.

    Starting them together, early, lets their slow start (imports) overlap with the other tests.
    Left-over processes are killed when the test session ends.
    """
    if not _BACKGROUND:
        root = tmp_path_factory.mktemp("background")
        for name, pause_at in (("killed", KILL_AT), ("ctrl_c", INTERRUPT_AT)):
            marker, log = root / f"{name}.paused", root / f"{name}.log"
            args = tiny_args(root / f"data-{name}", root / "runs", name, "handlers.extra=[handler_helpers:pause]")
            proc = spawn_cli(args, {"PAUSE_AT": str(pause_at), "PAUSE_MARKER": str(marker)}, log)
            _BACKGROUND[name] = Background(proc, root / f"data-{name}", root / "runs", name, marker, log)
        atexit.register(_stop_background)
    return _BACKGROUND


def _stop_background() -> None:
    for run in _BACKGROUND.values():
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


def history(run_dir: Path) -> list[dict[str, float]]:
    """Every epoch's entry of history.json, without the wall-clock times."""
    epochs = json.loads((run_dir / "history.json").read_text())["epochs"]
    return [{k: v for k, v in e.items() if not k.startswith("time/")} for e in epochs]


def assert_same_history(a: list[dict], b: list[dict], tol: float = 1e-6) -> None:
    assert [e["epoch"] for e in a] == [e["epoch"] for e in b]
    for ea, eb in zip(a, b):
        assert ea.keys() == eb.keys(), ea["epoch"]
        for key in ea:
            assert abs(ea[key] - eb[key]) <= tol * max(1.0, abs(eb[key])), (ea["epoch"], key, ea[key], eb[key])


# --- handlers.extra entries ------------------------------------------------------------------------


def pause(trainer: Engine, evaluator: Engine, config: Any) -> None:
    """At the end of iteration ``$PAUSE_AT``: create ``$PAUSE_MARKER``, then wait for Ctrl-C (or a kill)."""
    at, marker = int(os.environ["PAUSE_AT"]), Path(os.environ["PAUSE_MARKER"])

    @trainer.on(Events.ITERATION_COMPLETED(once=at))
    def _wait(engine: Engine) -> None:
        marker.write_text(str(engine.state.iteration))
        deadline = time.monotonic() + 300  # never outlive a test that has failed
        while not engine.state.interrupt_requested:
            if time.monotonic() > deadline:
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0.01)


def nan_batch(trainer: Engine, evaluator: Engine, config: Any) -> None:
    """Replace the inputs of iteration ``$NAN_AT`` by NaN: that iteration's loss is NaN."""

    @trainer.on(Events.ITERATION_STARTED(once=int(os.environ["NAN_AT"])))
    def _poison(engine: Engine) -> None:
        x, y = engine.state.batch[0], engine.state.batch[1]
        engine.state.batch = [torch.full_like(x, float("nan")), y]


def scripted_metric(trainer: Engine, evaluator: Engine, config: Any) -> None:
    """Overwrite a validation metric by a script: ``$SCRIPT="mse:0.5,0.3,..."``, one value per epoch.

    Runs on the evaluator's EPOCH_COMPLETED, after the metrics are computed and before
    the COMPLETED handlers (best checkpoint, early stopping, plateau) read them.
    """
    name, _, values = os.environ["SCRIPT"].partition(":")
    script = [float(v) for v in values.split(",")]

    @evaluator.on(Events.EPOCH_COMPLETED)
    def _override(engine: Engine) -> None:
        engine.state.metrics[name] = script[trainer.state.epoch - 1]


def scripted_evaluator(trainer: Engine, name: str, values: Sequence[float]) -> Engine:
    """A validation evaluator whose metric ``name`` is ``values[epoch - 1]``, run after every epoch (in-process
    handler tests)."""
    evaluator = Engine(lambda e, b: None)
    evaluator.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: e.state.metrics.__setitem__(name, values[trainer.state.epoch - 1])
    )
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run([0]))
    return evaluator


def ctrl_c(trainer: Engine, evaluator: Engine, config: Any) -> None:
    """Send a real SIGINT to this process at the end of iteration ``$CTRL_C_AT``."""

    @trainer.on(Events.ITERATION_COMPLETED(once=int(os.environ["CTRL_C_AT"])))
    def _press(_: Engine) -> None:
        os.kill(os.getpid(), signal.SIGINT)


def raise_at_attach(trainer: Engine, evaluator: Engine, config: Any) -> None:
    """Raise ``$ATTACH_RAISES`` (``RuntimeError`` or ``KeyboardInterrupt``) while the handlers are
    attached, a crash during start-up; without the variable, do nothing."""
    kind = os.environ.get("ATTACH_RAISES")
    if kind:
        raise {"RuntimeError": RuntimeError, "KeyboardInterrupt": KeyboardInterrupt}[kind]("raised at attach")


def fill_disk(trainer: Engine, evaluator: Engine, config: Any) -> None:
    """At the end of epoch ``$FILL_AT`` (after its checkpoints): fill the filesystem that holds ``$FILL_FILE``
    with that file, to the last byte; every later write that needs space fails with ENOSPC."""
    import errno

    at, ballast = int(os.environ["FILL_AT"]), Path(os.environ["FILL_FILE"])

    @trainer.on(Events.EPOCH_COMPLETED(once=at))
    def _fill(_: Engine) -> None:
        with open(ballast, "wb", buffering=0) as f:
            for size in (2**20, 4096, 1):
                try:
                    while True:
                        f.write(bytes(size))
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise


def disk_full(trainer: Engine, evaluator: Engine, config: Any) -> None:
    """From the end of epoch ``$FULL_AT`` on, every write into the run folder fails with ENOSPC.

    For machines where ``fill_disk`` has no small filesystem to fill: each file of the run
    folder that is open, or opened for writing later, gets ``/dev/full`` under its file
    descriptor, whose writes the kernel refuses with "No space left on device". train.log is
    left alone (the logging module reports its own write errors, with a traceback each).
    """
    import builtins
    import io

    at = int(os.environ["FULL_AT"])
    run_dir = (Path(config.output_dir) / config.name).resolve()

    def inside(path: Any) -> bool:
        path = Path(os.fsdecode(path)).resolve()
        return path.is_relative_to(run_dir) and path.name != "train.log"

    @trainer.on(Events.EPOCH_COMPLETED(once=at))
    def _full(_: Engine) -> None:
        full = os.open("/dev/full", os.O_WRONLY)
        for name in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{name}")
            except OSError:
                continue
            if target.startswith("/") and inside(target):
                os.dup2(full, int(name))
        real_os_open, real_io_open = os.open, io.open

        def os_open(path, flags, *args, **kwargs):
            fd = real_os_open(path, flags, *args, **kwargs)
            if flags & (os.O_WRONLY | os.O_RDWR) and inside(path):
                os.dup2(full, fd)
            return fd

        def io_open(file, mode="r", *args, **kwargs):
            f = real_io_open(file, mode, *args, **kwargs)
            if isinstance(file, (str, bytes, os.PathLike)) and set(mode) & set("wxa+") and inside(file):
                os.dup2(full, f.fileno())
            return f

        os.open, io.open, builtins.open = os_open, io_open, io_open


def hold(trainer: Engine, evaluator: Engine, config: Any) -> None:
    """As ``pause``, then, once the stop is requested, create ``$PAUSE_MARKER.requested`` and keep
    waiting at that iteration: for a second signal, which aborts the run (or a kill)."""
    at, marker = int(os.environ["PAUSE_AT"]), Path(os.environ["PAUSE_MARKER"])

    @trainer.on(Events.ITERATION_COMPLETED(once=at))
    def _wait(engine: Engine) -> None:
        marker.write_text(str(engine.state.iteration))
        deadline = time.monotonic() + 300  # never outlive a test that has failed
        while not engine.state.interrupt_requested and time.monotonic() < deadline:
            time.sleep(0.01)
        Path(f"{marker}.requested").write_text(str(engine.state.iteration))
        while time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGKILL)


def record_stop(trainer: Engine, evaluator: Engine, config: Any) -> None:
    """When the trainer stops early (``Events.TERMINATE``), write its iteration to ``$STOP_RECORD.<rank>``."""

    @trainer.on(Events.TERMINATE)
    def _record(engine: Engine) -> None:
        Path(f"{os.environ['STOP_RECORD']}.{idist.get_rank()}").write_text(str(engine.state.iteration))


def send_signals(trainer: Engine, evaluator: Engine, config: Any) -> None:
    """Send the real signals ``$SIGNALS`` (names, e.g. ``SIGINT,SIGINT``) to this process, one after the
    other, at the end of iteration ``$SIGNALS_AT``."""
    names = os.environ["SIGNALS"].split(",")

    @trainer.on(Events.ITERATION_COMPLETED(once=int(os.environ["SIGNALS_AT"])))
    def _send(_: Engine) -> None:
        for name in names:
            os.kill(os.getpid(), getattr(signal, name))


_SESSIONS: list[subprocess.Popen] = []


def spawn_session(args: Sequence[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """``spawn_cli`` in a session of its own: ``os.killpg(proc.pid, ...)`` signals the launcher and its
    ranks together (as SLURM does), and nothing of it outlives the tests (see ``signal_runs``)."""
    full_env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    full_env.pop("MASTER_PORT", None)
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "run.py"), *args],
            cwd=REPO,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    if not _SESSIONS:
        atexit.register(_stop_sessions)
    _SESSIONS.append(proc)
    return proc


TWO_PROCESSES = ["distributed.backend=gloo", "distributed.nproc_per_node=2"]  # 2 sequences per rank and batch
_SIGNAL_RUNS: dict[str, Background] = {}


def signal_runs(tmp_path_factory) -> dict[str, Background]:
    """The subprocess runs of test_faults' SIGTERM tests, all started on first use, each waiting at the end
    of iteration ``INTERRUPT_AT`` (mid-epoch 2):

    - "sigterm": one process (``pause``); "sigterm_twice": one process that keeps waiting after the
      first signal (``hold``);
    - "two_sigterm": 2 gloo processes (``pause``; ``record_stop`` writes each rank's last iteration
      to ``<log>.stopped.<rank>``).
    """
    if not _SIGNAL_RUNS:
        root = tmp_path_factory.mktemp("signals")
        for name, helpers, extra in (
            ("sigterm", "pause", []),
            ("sigterm_twice", "hold", []),
            ("two_sigterm", "pause,handler_helpers:record_stop", TWO_PROCESSES),
        ):
            marker, log = root / f"{name}.paused", root / f"{name}.log"
            args = tiny_args(
                root / f"data-{name}", root / "runs", name, f"handlers.extra=[handler_helpers:{helpers}]", *extra
            )
            env = {"PAUSE_AT": str(INTERRUPT_AT), "PAUSE_MARKER": str(marker), "STOP_RECORD": f"{log}.stopped"}
            _SIGNAL_RUNS[name] = Background(
                spawn_session(args, env, log), root / f"data-{name}", root / "runs", name, marker, log
            )
    return _SIGNAL_RUNS


def _stop_sessions() -> None:
    for proc in _SESSIONS:  # also a rank left behind by a launcher that has ended
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
