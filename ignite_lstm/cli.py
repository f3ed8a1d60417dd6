"""Command line: ``python run.py CONFIG [key=value ...]`` (also the ``ignite-lstm`` command).

Exit status: 0 done, 2 bad input (config, data file, output folder, checkpoint),
3 training diverged (NaN/inf loss), 130 interrupted by Ctrl-C and 143 by SIGTERM (a checkpoint
was saved; also 130 and 143 when a second signal aborted the run at once, without one).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import multiprocessing
import os
import shlex
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import ignite.distributed as idist
from omegaconf import OmegaConf

from ignite_lstm.checkpointing import CheckpointMismatch, find_checkpoint
from ignite_lstm.config import ConfigError, load_config
from ignite_lstm.h5io import DataFileError
from ignite_lstm.preflight import preflight

__all__ = ["main", "prepare_run", "RunDirError"]

logger = logging.getLogger("ignite_lstm")
MIN_FREE_BYTES = 50 * 2**20  # checkpoints of the default model are well under 1 MB each


class RunDirError(ValueError):
    """The run folder cannot be used (exists, not writable, full, nothing to resume)."""


def _newest_run_with_checkpoint(candidates: list[Path]) -> tuple[Path, Path] | None:
    def mtime(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except OSError:  # removed meanwhile (another launch's start-up that failed)
            return float("-inf")

    for run_dir in sorted(candidates, key=mtime, reverse=True):
        checkpoint = find_checkpoint(run_dir / "checkpoints")
        if checkpoint is not None:
            return run_dir, checkpoint
    return None


def _holds_results(run_dir: Path) -> bool:
    """Whether the run got past its start-up: a checkpoint, a finished epoch or the final model."""
    return (any((run_dir / "checkpoints").glob("*.pt")) or (run_dir / "history.json").exists()
            or (run_dir / "model.pt").exists())


def _make_parents(folder: Path, created: list[Path]) -> None:
    """Create the missing ancestors of ``folder``, appending to ``created`` those this call made."""
    missing = []
    parent = folder.parent
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    for path in reversed(missing):
        try:
            os.mkdir(path)
        except FileExistsError:  # made by a launch starting at the same moment: not ours to remove
            if not path.is_dir():
                raise
        else:
            created.append(path)


def _taken(run_dir: Path) -> RunDirError:
    return RunDirError(f"Run folder {run_dir} already holds a run; pass resume=auto to continue it, "
                       f"or another name=... for a new run.")


def _claim_run_dir(out: Path, base: str, numbered: bool, created: list[Path]) -> Path:
    """Claim a new run folder ``out/base`` atomically and return it.

    The claim is the exclusive creation of ``config.yaml`` (empty, written later) in a
    folder that this call created (``os.mkdir``, no ``exist_ok``) or, for a ``name=``
    folder, one that exists and is empty: of launches racing for one folder exactly one
    wins. ``numbered`` (no ``name=``): a folder that exists already makes the next one be
    tried (``base-2``, ``base-3``, ...), so every launch gets one. Folders this call made
    are appended to ``created``.
    """
    _make_parents(out / base, created)
    n = 1
    while True:
        run_dir = out / (base if n == 1 else f"{base}-{n}")
        n += 1
        try:
            os.mkdir(run_dir)
            created.append(run_dir)
        except FileExistsError:
            if numbered:
                continue
            if not run_dir.is_dir() or any(run_dir.iterdir()):
                raise _taken(run_dir) from None
        try:
            open(run_dir / "config.yaml", "x").close()
            return run_dir
        except FileExistsError:  # another launch claimed the folder between the mkdir and this
            if not numbered:
                raise _taken(run_dir) from None


def _remove_empty(folders: list[str]) -> None:
    """``os.rmdir`` each folder, deepest first, until one is not empty (another run's is in it)."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            break


def prepare_run(cfg: Any, stem: str) -> dict[str, Any]:
    """Choose, claim and check the run folder before anything is trained; write its config.yaml.

    A new run gets ``output_dir/name`` (``name`` defaults to ``<config stem>-<time>``,
    with ``-2``, ``-3``, ... for launches in the same second) and is refused if that folder
    already holds files. The folder is claimed atomically (``_claim_run_dir``): launches at
    the same moment get a folder each, and of launches with one ``name`` exactly one wins.

    ``resume=auto`` continues the newest run of ``name`` (or of this config's runs) that
    has a training checkpoint. Where there is none it is no dead end (each case is logged):

    - ``name`` given and its folder holds a run killed before its first checkpoint: that run
      starts again from the beginning in the same folder (refused if the folder holds a
      finished run's ``model.pt``);
    - ``name`` given and its folder does not exist (or is empty): a new run starts there;
    - no ``name`` and no run of this config has a checkpoint: a new run starts in a new
      folder. A checkpoint-less folder of this config is never reused: it may belong to a
      launch that is still starting up.

    ``resume=PATH`` continues from that checkpoint file.

    Returns:
        ``{"run_dir": str, "resume_from": str | None, "new": bool, "created": [str, ...]}``:
        ``new`` when this call claimed a new folder, ``created`` the folders it made (the
        run folder, ``output_dir``, ...), deepest first; ``_discard_unused_run_dir`` uses
        them to undo a start-up that fails.

    Raises:
        RunDirError: with the folder and the reason.
        CheckpointMismatch: the checkpoint to resume cannot continue with this config.
    """
    out = Path(cfg.output_dir)
    resume_from, restart, note, where = None, False, None, None
    base = cfg.name or f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = out / base
    if cfg.resume == "auto":
        if cfg.name:
            candidates = [run_dir] if run_dir.is_dir() else []
        else:
            candidates = [p for p in out.glob(f"{stem}-*") if p.is_dir()] if out.is_dir() else []
        found = _newest_run_with_checkpoint(candidates)
        if found is not None:
            run_dir, checkpoint = found
            resume_from = str(checkpoint)
        elif cfg.name and candidates and any(run_dir.iterdir()):
            if (run_dir / "model.pt").exists():
                raise RunDirError(f"resume=auto: run folder {run_dir} holds a finished run ({run_dir / 'model.pt'}) "
                                  f"and no training checkpoint to continue; pass another name=... for a new run.")
            restart, where = True, run_dir / "checkpoints"
            note = "resume=auto: no checkpoint in %s yet; starting the run from the beginning in %s"
        elif cfg.name:
            where, note = run_dir, "resume=auto: %s holds no run yet; starting a new run in %s"
        else:
            where, note = out, "resume=auto: no run of this config in %s has a checkpoint; starting a new run in %s"
    elif cfg.resume:
        checkpoint = Path(cfg.resume)
        if not checkpoint.is_file():
            raise RunDirError(f"resume={cfg.resume}: the checkpoint file does not exist.")
        run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
        resume_from = str(checkpoint)
    if resume_from is not None:
        _check_resume(cfg, resume_from)
    nearest = run_dir  # free space is checked before anything is created
    while not nearest.exists() and nearest != nearest.parent:
        nearest = nearest.parent
    free = shutil.disk_usage(nearest).free
    if free < MIN_FREE_BYTES:
        raise RunDirError(f"Output folder {run_dir} has only {free // 2**20} MiB free; at least "
                          f"{MIN_FREE_BYTES // 2**20} MiB are needed.")
    plan: dict[str, Any] = {"run_dir": str(run_dir), "resume_from": resume_from, "new": False, "created": []}
    try:
        if resume_from is None and not restart:
            created: list[Path] = []
            try:
                run_dir = _claim_run_dir(out, base, not cfg.name, created)
            except OSError as exc:
                raise RunDirError(f"Output folder {run_dir} is not writable: {exc.strerror or exc}.") from exc
            finally:
                plan["created"] = [str(p) for p in reversed(created)]
            plan.update(run_dir=str(run_dir), new=True)
        try:
            probe = run_dir / f".write-test-{os.getpid()}"
            probe.write_bytes(b"0" * 4096)
            probe.unlink()
            name = "config.yaml" if resume_from is None else f"config-resume-{int(time.time())}.yaml"
            OmegaConf.save(cfg, run_dir / name)
        except OSError as exc:
            raise RunDirError(f"Output folder {run_dir} is not writable: {exc.strerror or exc}.") from exc
    except BaseException:
        if plan["new"]:
            _discard_unused_run_dir(plan)
        else:  # not claimed: only the (empty) folders this call made go
            _remove_empty(plan["created"])
        raise
    if note:
        logger.info(note, where, run_dir)
    return plan


def _check_resume(cfg: Any, checkpoint: str) -> None:
    """Model shape, finished or early-stopped run: refused before anything is written."""
    from ignite_lstm.checkpointing import read_checkpoint
    from ignite_lstm.resume import check_resumable
    from ignite_lstm.pipeline import setup_model

    es = cfg.handlers.early_stopping
    check_resumable(read_checkpoint(checkpoint), model_args=setup_model(cfg).config, epochs=cfg.train.epochs,
                    patience=es.patience if es.enabled else None, source=checkpoint)


def _discard_unused_run_dir(plan: dict | None) -> None:
    """Undo a new run's start-up that failed before its first checkpoint: nothing blocks a retry.

    Only what ``prepare_run`` claimed goes: the run folder's contents (it was empty when
    claimed) and the folders it created (``output_dir`` too), each only if then empty,
    since a launch at the same moment may have put its run folder there. A resumed run,
    or one that got past its start-up (``_holds_results``), is left alone.
    """
    if plan is None or not plan.get("new"):
        return
    run_dir = Path(plan["run_dir"])
    if not run_dir.is_dir() or _holds_results(run_dir):
        return
    root, here = logging.getLogger(), run_dir.resolve()
    for handler in root.handlers[:]:  # close train.log before removing it
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent.resolve() == here:
            root.removeHandler(handler)
            handler.close()
    for child in run_dir.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    _remove_empty(plan["created"])


def _setup_logging(rank: int, run_dir: str | None = None) -> None:
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


def _worker(local_rank: int, cfg: Any, stem: str, plan: dict | None, outcomes: Any = None) -> None:
    # torch-heavy import, after the config is known good
    from ignite_lstm.training import TrainingDiverged, TrainingInterrupted, run_training

    own = None  # the plan this process made (torchrun's rank 0): undone if the start-up fails
    try:
        if plan is None:  # started by torchrun: rank 0 chooses the folder for everyone
            text = ""
            if idist.get_rank() == 0:
                try:
                    own = prepare_run(cfg, stem)
                    text = json.dumps(own)
                except RunDirError as exc:
                    text = json.dumps({"error": str(exc)})
            plan = json.loads(idist.broadcast(text, src=0, safe_mode=True))
            if "error" in plan:
                raise RunDirError(plan["error"])
        try:
            _setup_logging(idist.get_rank(), plan["run_dir"])
            run_training(local_rank, cfg, plan["run_dir"], plan["resume_from"], launched=outcomes is not None)
        except BaseException:
            _discard_unused_run_dir(own)
            raise
    except (RunDirError, DataFileError, CheckpointMismatch, TrainingDiverged, TrainingInterrupted) as exc:
        if outcomes is not None:  # a spawned process: the launcher would see a traceback text only
            outcomes.put((idist.get_rank(), type(exc), str(exc), getattr(exc, "checkpoint", None),
                          getattr(exc, "signum", None)))
        raise
    if outcomes is not None:  # finished: a launcher that a signal made wait for the ranks returns normally
        outcomes.put((idist.get_rank(), None, "", None, None))


def _raise_reported(outcomes: Any) -> int:
    """Raise, in the launcher, the typed error that a spawned rank reported (the lowest rank's);
    without one, return how many ranks reported a finished run."""
    from ignite_lstm.training import TrainingInterrupted

    reports = []
    while not outcomes.empty():
        reports.append(outcomes.get())
    errors = [r for r in reports if r[1] is not None]
    if errors:
        _, kind, message, checkpoint, signum = min(errors, key=lambda r: r[0])
        raise (kind(message, checkpoint, signum) if kind is TrainingInterrupted else kind(message)) from None
    return len(reports)


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
    from ignite.engine import Engine

    from ignite_lstm.interrupts import Aborted

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
    engine_logger = logging.getLogger(f"{Engine.__module__}.{Engine.__name__}")  # as Engine names its logger
    quiet = _QuietAbort()
    engine_logger.addFilter(quiet)
    try:
        yield
    finally:
        engine_logger.removeFilter(quiet)
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)


def _launch(cfg: Any, stem: str, plan: dict | None, nproc: int | None) -> None:
    """Run ``_worker`` here (one process, or one of torchrun's) or on ``nproc`` spawned processes.

    Spawned ranks report their typed errors (bad data file, Ctrl-C, SIGTERM, divergence) through
    a queue, so that the launcher exits as one process would (2, 130, 143, 3). A Ctrl-C or
    SIGTERM that reaches the launcher is sent on to the ranks (``docker stop`` and Kubernetes
    signal the launcher alone); it then waits until they have stopped at a safe point and saved
    the checkpoint. A second one kills them: the run aborts at once. The ranks count no signal
    twice (``StopOnInterrupt(abort=False)``), also when the whole process group receives it
    (a terminal's Ctrl-C, SLURM): the launcher alone decides to abort.
    """
    from ignite_lstm.interrupts import Aborted

    d = cfg.distributed
    outcomes = multiprocessing.get_context("spawn").SimpleQueue() if nproc else None
    # Ignite's default rendezvous port is a fixed one (2222): a second run on this machine would fail.
    port = _free_port() if nproc and "MASTER_PORT" not in os.environ else None
    with _launcher_signals(spawned=outcomes is not None):
        try:
            with idist.Parallel(backend=d.backend, nproc_per_node=nproc, master_port=port) as parallel:
                parallel.run(_worker, cfg, stem, plan, outcomes)
        except _Forwarded as exc:
            for child in multiprocessing.active_children():
                child.join()
            if _raise_reported(outcomes) == nproc:  # the signal came after training: the ranks finished
                return
            raise Aborted(exc.signum) from None  # no rank reported: they stopped before training, nothing to save
        except Exception:
            if outcomes is not None:
                _raise_reported(outcomes)
            raise


def _check_world(cfg: Any, world: int, torchrun: bool) -> None:
    """Settings that depend on the number of processes, checked before anything is written."""
    problems = []
    if torchrun and world > 1 and not cfg.distributed.backend:
        problems.append(f"distributed.backend: null cannot join torchrun's {world} processes (each would train "
                        f"alone); set gloo (CPU) or nccl (GPU)")
    if cfg.train.batch_size % world:
        problems.append(f"train.batch_size: {cfg.train.batch_size} is not divisible by the {world} processes "
                        f"(each trains on an equal share of the global batch); use a multiple of {world}")
    if problems:
        raise ConfigError(problems)


def _summary(run_dir: Path, frequencies: Sequence[float]) -> str:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = json.loads((run_dir / "history.json").read_text())
    seconds = [e["time/epoch_seconds"] for e in history["epochs"] if "time/epoch_seconds" in e]
    rows = ["mse"] + [f"mse_f{f:g}" for f in frequencies] + ["rmse", "mae", "corr", "r2", "snr"]
    lines = [f"Run folder: {run_dir}",
             f"Epochs: {len(history['epochs'])}, mean epoch time {sum(seconds) / max(len(seconds), 1):.2f} s",
             f"{'metric':<10}{'train':>12}{'val':>12}{'test':>12}"]
    for row in rows:
        cells = [metrics.get(f"{split}/{row}") for split in ("train", "val", "test")]
        lines.append(f"{row:<10}" + "".join(f"{c:>12.5f}" if c is not None else f"{'-':>12}" for c in cells))
    return "\n".join(lines)


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _disk_full_message(exc: OSError, plan: dict | None) -> str:
    """A full disk (or quota) during the run: the file, its folder, and the checkpoint to resume from."""
    run_dir = Path(plan["run_dir"]) if plan else None
    target = Path(exc.filename) if exc.filename else None
    folder = target.parent if target else run_dir
    where = f" (folder {folder})" if folder else ""
    text = f"{exc.strerror} while writing {target or 'a file'}{where}; training stopped."
    if run_dir is not None:
        kept = find_checkpoint(run_dir / "checkpoints")
        text += (f" The last complete checkpoint is {kept}: free some space, then continue with resume=auto."
                 if kept else " No checkpoint had been written yet.")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="ignite-lstm", description="Train a stateful L = 1 LSTM on the signal-extraction task.",
        epilog="Example: python run.py configs/base.yaml train.epochs=20 resume=auto",
    )
    parser.add_argument("config", help="YAML config file, e.g. configs/base.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.lr=1e-3")
    args = parser.parse_args(argv)
    torchrun = "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)
    _setup_logging(int(os.environ.get("RANK", 0)))
    stem = Path(args.config).stem
    plan = None
    try:
        cfg = load_config(args.config, args.overrides)
        preflight(cfg)  # device, handlers.extra, data.dir, memory: before anything is written
        d = cfg.distributed
        nproc = d.nproc_per_node if (d.backend and not torchrun) else None
        _check_world(cfg, int(os.environ.get("WORLD_SIZE", 1)) if torchrun else nproc or 1, torchrun)
        plan = None if torchrun else prepare_run(cfg, stem)
        try:
            _launch(cfg, stem, plan, nproc)
        except BaseException:  # a start-up that failed leaves nothing that blocks the same command
            _discard_unused_run_dir(plan)
            raise
    except (ConfigError, RunDirError, DataFileError, CheckpointMismatch) as exc:
        _discard_unused_run_dir(plan)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # a second Ctrl-C or SIGTERM, or one outside the training loop
        print(f"error: aborted by {str(exc) or 'Ctrl-C'}", file=sys.stderr)
        return 128 + getattr(exc, "signum", signal.SIGINT)
    except OSError as exc:
        if exc.errno not in _DISK_FULL:
            raise
        print(f"error: {_disk_full_message(exc, plan)}", file=sys.stderr)
        return 1
    except Exception as exc:  # typed training outcomes, also when raised in a spawned process
        from ignite_lstm.training import TrainingDiverged, TrainingInterrupted

        if isinstance(exc, TrainingInterrupted):
            kept = [a for a in args.overrides if not a.startswith("resume=")]
            hint = " ".join(shlex.quote(a) for a in [sys.argv[0], args.config, *kept, f"resume={exc.checkpoint}"])
            print(f"{exc}; checkpoint saved to {exc.checkpoint}. Resume with: python {hint}", file=sys.stderr)
            return 128 + exc.signum
        if isinstance(exc, TrainingDiverged):
            print(f"error: {exc}", file=sys.stderr)
            return 3
        raise
    if plan is not None and idist.get_rank() == 0:
        print(_summary(Path(plan["run_dir"]), cfg.data.frequencies))
    return 0


def main_exit() -> None:
    """Console-script entry point: ``ignite-lstm CONFIG ...`` trains; ``ignite-lstm export ...`` exports to ONNX."""
    if sys.argv[1:2] == ["export"]:
        from ignite_lstm.export import main as export_main

        sys.exit(export_main(sys.argv[2:], prog="ignite-lstm export"))
    sys.exit(main())


if __name__ == "__main__":
    main_exit()
