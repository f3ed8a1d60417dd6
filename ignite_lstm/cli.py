"""Command line: ``python run.py CONFIG [key=value ...]`` (also the ``ignite-lstm`` command).

Exit status: 0 done, 2 bad input (config, data file, output folder, checkpoint),
3 training diverged (NaN/inf loss), 130 interrupted by Ctrl-C (a checkpoint was saved).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import shlex
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import ignite.distributed as idist
from omegaconf import OmegaConf

from ignite_lstm.checkpointing import CheckpointMismatch, find_checkpoint
from ignite_lstm.config import ConfigError, load_config
from ignite_lstm.h5io import DataFileError

__all__ = ["main", "prepare_run", "RunDirError"]

logger = logging.getLogger("ignite_lstm")
MIN_FREE_BYTES = 50 * 2**20  # checkpoints of the default model are well under 1 MB each


class RunDirError(ValueError):
    """The run folder cannot be used (exists, not writable, full, nothing to resume)."""


def _newest_run_with_checkpoint(candidates: list[Path]) -> tuple[Path, Path] | None:
    for run_dir in sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True):
        checkpoint = find_checkpoint(run_dir / "checkpoints")
        if checkpoint is not None:
            return run_dir, checkpoint
    return None


def prepare_run(cfg: Any, stem: str) -> dict[str, str | None]:
    """Choose and check the run folder before anything is trained; write its config.yaml.

    A new run gets ``output_dir/name`` (``name`` defaults to ``<config stem>-<time>``)
    and is refused if that folder already holds files. ``resume=auto`` continues the
    newest run of ``name`` (or of this config's runs) that has a checkpoint;
    ``resume=PATH`` continues from that checkpoint file.

    Returns:
        ``{"run_dir": str, "resume_from": str | None}``.

    Raises:
        RunDirError: with the folder and the reason.
        CheckpointMismatch: the checkpoint to resume cannot continue with this config.
    """
    out = Path(cfg.output_dir)
    resume_from = None
    if cfg.resume == "auto":
        if cfg.name:
            candidates = [out / cfg.name] if (out / cfg.name).is_dir() else []
        else:
            candidates = [p for p in out.glob(f"{stem}-*") if p.is_dir()] if out.is_dir() else []
        found = _newest_run_with_checkpoint(candidates)
        if found is None:
            where = out / cfg.name if cfg.name else out / f"{stem}-*"
            raise RunDirError(f"resume=auto: no training checkpoint found in {where}/checkpoints.")
        run_dir, checkpoint = found
        resume_from = str(checkpoint)
    elif cfg.resume:
        checkpoint = Path(cfg.resume)
        if not checkpoint.is_file():
            raise RunDirError(f"resume={cfg.resume}: the checkpoint file does not exist.")
        run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
        resume_from = str(checkpoint)
    else:
        if cfg.name:
            run_dir = out / cfg.name
            if run_dir.exists() and any(run_dir.iterdir()):
                raise RunDirError(
                    f"Run folder {run_dir} already holds a run; pass resume=auto to continue it, "
                    f"or another name=... for a new run."
                )
        else:
            base = f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
            run_dir, n = out / base, 1
            while run_dir.exists():
                n += 1
                run_dir = out / f"{base}-{n}"
    if resume_from is not None:
        _check_resume(cfg, resume_from)
    nearest = run_dir  # free space is checked before anything is created
    while not nearest.exists() and nearest != nearest.parent:
        nearest = nearest.parent
    free = shutil.disk_usage(nearest).free
    if free < MIN_FREE_BYTES:
        raise RunDirError(f"Output folder {run_dir} has only {free // 2**20} MiB free; at least "
                          f"{MIN_FREE_BYTES // 2**20} MiB are needed.")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as exc:
        raise RunDirError(f"Output folder {run_dir} is not writable: {exc.strerror or exc}.") from exc
    config_file = run_dir / ("config.yaml" if resume_from is None else f"config-resume-{int(time.time())}.yaml")
    OmegaConf.save(cfg, config_file)
    return {"run_dir": str(run_dir), "resume_from": resume_from}


def _check_resume(cfg: Any, checkpoint: str) -> None:
    """Model shape, finished or early-stopped run: refused before anything is written."""
    from ignite_lstm.checkpointing import check_resumable, read_checkpoint
    from ignite_lstm.pipeline import setup_model

    es = cfg.handlers.early_stopping
    check_resumable(read_checkpoint(checkpoint), model_args=setup_model(cfg).config, epochs=cfg.train.epochs,
                    patience=es.patience if es.enabled else None, source=checkpoint)


def _discard_unused_run_dir(plan: dict | None) -> None:
    """Remove a new run folder that bad input stopped before any checkpoint (nothing half-written)."""
    if plan is None or plan.get("resume_from"):
        return
    run_dir = Path(plan["run_dir"])
    if run_dir.is_dir() and not any((run_dir / "checkpoints").glob("*.pt")):
        logging.shutdown()  # close train.log before removing it
        shutil.rmtree(run_dir, ignore_errors=True)


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

    try:
        if plan is None:  # started by torchrun: rank 0 chooses the folder for everyone
            text = ""
            if idist.get_rank() == 0:
                try:
                    text = json.dumps(prepare_run(cfg, stem))
                except RunDirError as exc:
                    text = json.dumps({"error": str(exc)})
            plan = json.loads(idist.broadcast(text, src=0, safe_mode=True))
            if "error" in plan:
                raise RunDirError(plan["error"])
        _setup_logging(idist.get_rank(), plan["run_dir"])
        run_training(local_rank, cfg, plan["run_dir"], plan["resume_from"])
    except (RunDirError, DataFileError, CheckpointMismatch, TrainingDiverged, TrainingInterrupted) as exc:
        if outcomes is not None:  # a spawned process: the launcher would see a traceback text only
            outcomes.put((idist.get_rank(), type(exc), str(exc), getattr(exc, "checkpoint", None)))
        raise


def _raise_reported(outcomes: Any) -> None:
    """Raise, in the launcher, the typed error that a spawned rank reported (the lowest rank's)."""
    from ignite_lstm.training import TrainingInterrupted

    reports = []
    while not outcomes.empty():
        reports.append(outcomes.get())
    if reports:
        _, kind, message, checkpoint = min(reports, key=lambda r: r[0])
        raise (kind(message, checkpoint) if kind is TrainingInterrupted else kind(message)) from None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(cfg: Any, stem: str, plan: dict | None, nproc: int | None) -> None:
    """Run ``_worker`` here (one process, or one of torchrun's) or on ``nproc`` spawned processes.

    Spawned ranks report their typed errors (bad data file, Ctrl-C, divergence) through a
    queue, so that the launcher exits as one process would (2, 130, 3).
    """
    d = cfg.distributed
    outcomes = multiprocessing.get_context("spawn").SimpleQueue() if nproc else None
    # Ignite's default rendezvous port is a fixed one (2222): a second run on this machine would fail.
    port = _free_port() if nproc and "MASTER_PORT" not in os.environ else None
    try:
        with idist.Parallel(backend=d.backend, nproc_per_node=nproc, master_port=port) as parallel:
            parallel.run(_worker, cfg, stem, plan, outcomes)
    except KeyboardInterrupt:
        if outcomes is None:
            raise
        # A terminal's Ctrl-C reaches the ranks too: they stop at a safe point and save a checkpoint.
        for child in multiprocessing.active_children():
            child.join()
        _raise_reported(outcomes)
        raise
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
        d = cfg.distributed
        nproc = d.nproc_per_node if (d.backend and not torchrun) else None
        _check_world(cfg, int(os.environ.get("WORLD_SIZE", 1)) if torchrun else nproc or 1, torchrun)
        plan = None if torchrun else prepare_run(cfg, stem)
        _launch(cfg, stem, plan, nproc)
    except (ConfigError, RunDirError, DataFileError, CheckpointMismatch) as exc:
        _discard_unused_run_dir(plan)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # typed training outcomes, also when raised in a spawned process
        from ignite_lstm.training import TrainingDiverged, TrainingInterrupted

        if isinstance(exc, TrainingInterrupted):
            kept = [a for a in args.overrides if not a.startswith("resume=")]
            hint = " ".join(shlex.quote(a) for a in [sys.argv[0], args.config, *kept, f"resume={exc.checkpoint}"])
            print(f"{exc}; checkpoint saved to {exc.checkpoint}. Resume with: python {hint}", file=sys.stderr)
            return 130
        if isinstance(exc, TrainingDiverged):
            print(f"error: {exc}", file=sys.stderr)
            return 3
        raise
    if plan is not None and idist.get_rank() == 0:
        print(_summary(Path(plan["run_dir"]), cfg.data.frequencies))
    return 0


# ``ignite-lstm NAME ...`` runs ``main(argv)`` of the module: one line per subcommand.
SUBCOMMANDS = {
    "tune": "ignite_lstm.tune",
}


def main_exit() -> None:
    """Console-script entry point (``ignite-lstm CONFIG ...``, ``ignite-lstm tune STUDY ...``)."""
    argv = sys.argv[1:]
    if argv and argv[0] in SUBCOMMANDS:
        import importlib

        sys.exit(importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:]))
    sys.exit(main())


if __name__ == "__main__":
    main_exit()
