"""One training run on one process of ``idist.Parallel``: set up, resume, train, outcome, finish.

``run`` reads top to bottom as the run goes; every rank runs it. A batch's way
through the code: ``data.setup_data`` yields ``(x, y)`` batches, the trainer of
``trainers.setup_trainer`` (``engines.create_trainer``) walks their windows, the
handlers of ``trainers.attach_handlers`` validate, save and log around it, and at the
end the final evaluator computes every metric once, on all ranks; rank 0 writes
``metrics.json``, ``model.pt`` and the report.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine
from ignite.utils import manual_seed
from omegaconf import OmegaConf

from ignite_lstm._internal.atomic import atomic_write
from ignite_lstm.app.run.evaluate import evaluate_splits, figure_predictions
from ignite_lstm.app.run.optim import setup_optimizer
from ignite_lstm.app.run.preflight import resolve_device
from ignite_lstm.app.run.rundir import read_resumable
from ignite_lstm.app.run.setup import RunHandlers, attach_handlers, setup_evaluators, setup_trainer
from ignite_lstm.app.task.dataset import setup_data
from ignite_lstm.app.task.model import setup_model
from ignite_lstm.checkpoint.resume import SkipBatches, config_changes
from ignite_lstm.models import native

__all__ = ["run", "run_training", "Outcome"]

logger = logging.getLogger("ignite_lstm")

_ROUNDING_ENV = ("IGNITE_LSTM_ISA", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
_EXIT = {"done": 0, "nothing": 0, "disk-full": 1, "refused": 2, "diverged": 3}


@dataclass
class Outcome:
    """How a run ended, as every rank returns it; ``exit_code`` is the CLI's exit status.

    ``status``: ``"done"``, ``"interrupted"`` (Ctrl-C or SIGTERM: ``checkpoint`` was saved,
    ``signum`` says which), ``"diverged"`` (NaN/inf loss), or, set by the CLI's worker,
    ``"refused"`` (bad input), ``"disk-full"`` and ``"nothing"`` (``resume=auto`` of a finished run). A finished run carries its final
    ``metrics`` (``{"test/mse_f3": ...}``), ``epochs`` and mean ``epoch_seconds``.
    """

    status: str
    message: str = ""
    checkpoint: str | None = None
    signum: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    epochs: int = 0
    epoch_seconds: float = math.nan
    run_dir: str = ""

    @property
    def exit_code(self) -> int:
        return _EXIT.get(self.status, 128 + self.signum)


@dataclass
class _Setup:
    cfg: Any
    run_dir: Path
    device: torch.device
    data: dict[str, Any]
    model: torch.nn.Module  # DDP-wrapped on several processes
    net: torch.nn.Module  # the model itself
    trainer: Engine
    evaluators: dict[str, Engine]
    handlers: RunHandlers
    train_data: SkipBatches


def run(
    local_rank: int,
    cfg: Any,
    run_dir: str,
    resume_from: str | None = None,
    *,
    launched: bool = False,
    attach: Sequence[Callable[[Engine, Engine, Any], None]] = (),
) -> Outcome:
    """Train, validate every ``eval.every`` epochs, evaluate every split once at the end.

    Args:
        local_rank: given by ``idist.Parallel``.
        cfg: the validated config.
        run_dir: the run folder (claimed and checked by the caller, ``rundir.prepare_run``).
        resume_from: a training checkpoint to continue from, or None.
        launched: spawned by the CLI's launcher, which forwards SIGINT/SIGTERM and decides
            alone to abort (``StopOnInterrupt(abort=False)``).
        attach: functions called as ``fn(trainer, val_evaluator, cfg)`` right after the
            ``handlers.extra`` ones (``ignite_lstm.app.tune.study`` attaches its pruning handler here);
            an exception they raise from a handler (``optuna.TrialPruned``) ends the run and
            propagates, leaving the run folder as it stands.

    Returns:
        The ``Outcome``: done (with the final metrics), interrupted or diverged.

    Raises:
        CheckpointMismatch: ``resume_from`` does not fit this config. DataFileError: a bad data file.
    """
    checkpoint = _readable_checkpoint(cfg, resume_from)
    s = setup(cfg, run_dir, launched=launched, attach=attach)
    if checkpoint is not None:
        _resume(s, checkpoint, resume_from)
    try:
        s.trainer.run(s.train_data, max_epochs=cfg.train.epochs)
    finally:
        s.handlers.interrupt.close()
    outcome = _outcome(s)
    if outcome.status == "done":
        _finish(s, outcome)
    return outcome


def run_training(local_rank: int, cfg: Any, run_dir: str, resume_from: str | None, **kwargs: Any) -> Outcome:
    """Deprecated name of ``run``."""
    return run(local_rank, cfg, run_dir, resume_from, **kwargs)


def _readable_checkpoint(cfg: Any, resume_from: str | None) -> dict | None:
    """The checkpoint to resume, checked against this config before any work."""
    return read_resumable(resume_from, cfg) if resume_from else None


def setup(
    cfg: Any,
    run_dir: str | Path,
    *,
    launched: bool = False,
    attach: Sequence[Callable[[Engine, Engine, Any], None]] = (),
) -> _Setup:
    """Seed, data, model, optimizer, engines and handlers of a run, ready for ``trainer.run``."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    data = setup_data(cfg)
    model = idist.auto_model(setup_model(cfg).to(device))
    net = model.module if hasattr(model, "module") else model
    t = cfg.train
    optimizer = idist.auto_optim(
        setup_optimizer(t.optimizer, model.parameters(), lr=t.lr, weight_decay=t.weight_decay, momentum=t.momentum)
    )
    trainer = setup_trainer(cfg, model, optimizer, device)
    evaluators = setup_evaluators(cfg, model, device)
    logger.info(
        "Training path: %s (tbptt_steps=%d, update=%s), LSTM kernel: %s",
        trainer.state.execution,
        t.tbptt_steps,
        t["update"],
        native.describe(device),
    )
    # what else decides the rounding of the float sums (ignite-lstm matrix --isa sets the first two)
    rounding = [f"{k}={os.environ[k]}" for k in _ROUNDING_ENV if os.environ.get(k)]
    if rounding:
        logger.info("Instruction sets and threads from the environment: %s", " ".join(rounding))
    handlers = attach_handlers(
        trainer,
        evaluators["val"],
        cfg,
        model=model,
        optimizer=optimizer,
        data=data,
        run_dir=run_dir,
        extra=attach,
        abort_on_second_signal=not launched,
    )
    return _Setup(
        cfg, Path(run_dir), device, data, model, net, trainer, evaluators, handlers, SkipBatches(data["train_loader"])
    )


def _resume(s: _Setup, checkpoint: dict, source: str) -> None:
    s.handlers.checkpoints.resume(checkpoint, s.train_data, source=source)  # the objects, savers, position
    config = s.handlers.config_state
    changed = config_changes(config.loaded or {}, config.value)
    if changed:
        logger.warning("Resuming with changed settings: %s", "; ".join(changed))


def _outcome(s: _Setup) -> Outcome:
    """Done, interrupted (the interrupted checkpoint saved here) or diverged."""
    trainer, h, cfg = s.trainer, s.handlers, s.cfg
    stopper, interrupt = h.stopper, h.interrupt
    finished = trainer.state.iteration >= cfg.train.epochs * trainer.state.epoch_length or (
        stopper is not None and stopper.counter >= stopper.patience
    )
    where = f"at epoch {trainer.state.epoch}, iteration {trainer.state.iteration}"
    if interrupt.requested and finished:  # nothing left to resume: finish with the final evaluation
        logger.warning(
            "%s after the last epoch: finishing the final evaluation (%s again to abort).",
            interrupt.label,
            "press" if interrupt.signum == signal.SIGINT else "send it",
        )
    elif interrupt.requested:
        h.checkpoints["interrupted"](trainer)
        saved = h.checkpoints["interrupted"].last_checkpoint
        return Outcome(
            "interrupted",
            f"Training interrupted by {interrupt.label} {where}",
            str(saved) if saved else None,
            int(interrupt.signum or signal.SIGINT),
            run_dir=str(s.run_dir),
        )
    loss = trainer.state.output["loss"] if isinstance(trainer.state.output, dict) else 0.0
    if cfg.handlers.terminate_on_nan and not math.isfinite(loss):
        last = h.checkpoints.get("last")
        if last is None:
            kept = " No checkpoint was kept (handlers.checkpoint.enabled is false)."
        elif last.last_checkpoint is None:
            kept = " No checkpoint had been written yet."
        else:
            kept = f" The last good checkpoint is {last.last_checkpoint}."
        return Outcome(
            "diverged",
            f"Loss became {loss} {where}; training stopped.{kept} Lower train.lr or set train.grad_clip.",
            run_dir=str(s.run_dir),
        )
    return Outcome(
        "done",
        epochs=trainer.state.epoch,
        epoch_seconds=_mean(h.history.series("time/epoch_seconds")),
        run_dir=str(s.run_dir),
    )


def _finish(s: _Setup, outcome: Outcome) -> None:
    """Best weights back (if asked), the final evaluation on all ranks, rank 0's files and report."""
    cfg, h = s.cfg, s.handlers
    if h.stopper is not None and cfg.handlers.early_stopping.restore_best and "best" in h.checkpoints:
        best = h.checkpoints["best"].last_checkpoint  # the highest score of the files kept
        if best is not None:
            logger.info("Restoring the best weights from %s", best)
            s.net.load_state_dict(torch.load(best, map_location=s.device, weights_only=True)["model"])
    outcome.metrics = evaluate_splits(s.evaluators["final"], s.data["eval_loaders"])
    if idist.get_rank() != 0:
        return
    text = json.dumps(outcome.metrics, indent=2)
    atomic_write(s.run_dir / "metrics.json", lambda f: f.write(text.encode()))
    h.history.save(s.run_dir / "history.json")
    final_model = {
        "model": s.net.state_dict(),
        "model_args": s.net.config,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    atomic_write(s.run_dir / "model.pt", lambda f: torch.save(final_model, f))
    if cfg.eval.report:
        from ignite_lstm.app.task.report import write_report  # matplotlib only when a report is wanted

        dataset = s.data["datasets"]["test"]
        write_report(
            s.run_dir,
            outcome.metrics,
            dataset=dataset,
            predictions=figure_predictions(s.net, dataset, s.device),
            frequencies=list(cfg.data.frequencies),
            fs=cfg.data.fs,
            splits=list(s.data["datasets"]),
            history=h.history.state_dict(),
            figure_split="test",
        )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
