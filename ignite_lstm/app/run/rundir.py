"""Run folders: choose, claim atomically, check, and discard a start-up that failed.

``prepare_run`` is called once per launch, before anything is trained (rank 0 under
torchrun); ``discard_unused_run_dir`` undoes what it claimed when the start-up fails,
so that nothing blocks the same command.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ignite_lstm.app.task.model import model_args
from ignite_lstm.checkpoint.files import find_checkpoint, read_checkpoint
from ignite_lstm.checkpoint.resume import RunFinished, check_resumable

__all__ = ["prepare_run", "discard_unused_run_dir", "read_resumable", "RunDirError", "NothingToDo", "MIN_FREE_BYTES"]

logger = logging.getLogger("ignite_lstm")
MIN_FREE_BYTES = 50 * 2**20  # checkpoints of the default model are well under 1 MB each


class RunDirError(ValueError):
    """The run folder cannot be used (exists, not writable, full, nothing to resume)."""


class NothingToDo(RunDirError):
    """``resume=auto`` found the run finished: the command has nothing to do (the CLI exits 0).

    A preemption loop re-runs the same command until it succeeds; at the end of the run that
    command must succeed too. ``resume=PATH`` of a finished run is still refused.
    """


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
    return (
        any((run_dir / "checkpoints").glob("*.pt"))
        or (run_dir / "history.json").exists()
        or (run_dir / "model.pt").exists()
    )


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
    return RunDirError(
        f"Run folder {run_dir} already holds a run; pass resume=auto to continue it, or another name=... for a new run."
    )


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


def _resume_target(cfg: Any, stem: str, out: Path, run_dir: Path) -> tuple[Path, str | None, bool, str | None, Any]:
    """Where ``resume=`` points: ``(run_dir, checkpoint or None, restart in place, log note, its folder)``."""
    resume_from, restart, note, where = None, False, None, None
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
                raise NothingToDo(
                    f"resume=auto: run folder {run_dir} holds a finished run ({run_dir / 'model.pt'}) "
                    f"and no training checkpoint to continue: nothing to do (another name=... starts a new run)."
                )
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
    return run_dir, resume_from, restart, note, where


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

    ``resume=PATH`` continues from that checkpoint file. A finished run (its last epoch
    done, or stopped early) is refused with ``resume=PATH``; with ``resume=auto`` it raises
    ``NothingToDo``, and the command succeeds (a preemption loop ends).

    Returns:
        ``{"run_dir": str, "resume_from": str | None, "new": bool, "created": [str, ...]}``:
        ``new`` when this call claimed a new folder, ``created`` the folders it made (the
        run folder, ``output_dir``, ...), deepest first; ``discard_unused_run_dir`` uses
        them to undo a start-up that fails.

    Raises:
        RunDirError: with the folder and the reason.
        CheckpointMismatch: the checkpoint to resume cannot continue with this config.
    """
    out = Path(cfg.output_dir)
    base = cfg.name or f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir, resume_from, restart, note, where = _resume_target(cfg, stem, out, out / base)
    if resume_from is not None:
        try:
            read_resumable(resume_from, cfg)  # refused before anything is written
        except RunFinished as exc:
            if cfg.resume != "auto":
                raise
            raise NothingToDo(f"resume=auto: the run in {run_dir} has finished, nothing to do ({exc})") from None
    nearest = run_dir  # free space is checked before anything is created
    while not nearest.exists() and nearest != nearest.parent:
        nearest = nearest.parent
    free = shutil.disk_usage(nearest).free
    if free < MIN_FREE_BYTES:
        raise RunDirError(
            f"Output folder {run_dir} has only {free // 2**20} MiB free; at least "
            f"{MIN_FREE_BYTES // 2**20} MiB are needed."
        )
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
            discard_unused_run_dir(plan)
        else:  # not claimed: only the (empty) folders this call made go
            _remove_empty(plan["created"])
        raise
    if note:
        logger.info(note, where, run_dir)
    return plan


def discard_unused_run_dir(plan: dict | None) -> None:
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


def read_resumable(path: str | Path, cfg: Any) -> dict[str, Any]:
    """Read a training checkpoint and check that the run of ``cfg`` can continue from it.

    Raises:
        CheckpointMismatch: unreadable, not a training checkpoint, another model shape, a
            finished run, or a run that stopped early (see ``check_resumable``).
    """
    checkpoint = read_checkpoint(path)
    es = cfg.handlers.early_stopping
    check_resumable(
        checkpoint,
        model_args=model_args(cfg),
        epochs=cfg.train.epochs,
        patience=es.patience if es.enabled else None,
        source=path,
    )
    return checkpoint
