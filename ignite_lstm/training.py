"""One training run on one process of ``idist.Parallel``: engines, handlers, resume, results."""

from __future__ import annotations

import json
import logging
import math
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Timer
from ignite.metrics import Average, RunningAverage
from ignite.utils import manual_seed
from omegaconf import OmegaConf

from ignite_lstm import native
from ignite_lstm._atomic import atomic_write
from ignite_lstm.checkpointing import FixedState, attach_checkpoints, checkpointer_states, read_checkpoint
from ignite_lstm.engines import create_evaluator, create_trainer
from ignite_lstm.handlers import (
    attach_early_stopping,
    attach_progress,
    attach_tensorboard,
    attach_terminate_on_nan,
    load_extra_handlers,
)
from ignite_lstm.history import MetricsHistory
from ignite_lstm.interrupts import StopOnInterrupt
from ignite_lstm.metrics import build_metrics, metric_direction
from ignite_lstm.pipeline import setup_data, setup_loss, setup_model, setup_optimizer
from ignite_lstm.resume import RNGState, SkipBatches, check_resumable, config_changes, resume_from_checkpoint
from ignite_lstm.schedules import steps_per_epoch
from ignite_lstm.schedules import setup_lr_scheduler

__all__ = ["run_training", "TrainingDiverged", "TrainingInterrupted"]

logger = logging.getLogger("ignite_lstm")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(RuntimeError):
    """Ctrl-C or SIGTERM: a checkpoint was saved; ``checkpoint`` is its path, ``signum`` the signal."""

    def __init__(self, message: str, checkpoint: str | None, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint
        self.signum = int(signum)


def _device(name: str) -> torch.device:
    if name == "auto":
        if idist.get_world_size() > 1:
            return idist.device()
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _prefixed(prefix: str, metrics: dict[str, Any]) -> dict[str, float]:
    return {f"{prefix}/{k}": float(v) for k, v in metrics.items()}


def _write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2)
    atomic_write(path, lambda f: f.write(text.encode()))


def run_training(local_rank: int, cfg: Any, run_dir: str, resume_from: str | None, *,
                 launched: bool = False) -> dict[str, Any]:
    """Train, validate every ``eval.every`` epochs, evaluate all splits at the end.

    Handler order on the trainer's ``EPOCH_COMPLETED``: epoch metrics, validation
    (which decides the best checkpoint, early stopping and the plateau schedule),
    the history, the epoch and last checkpoints, TensorBoard, extra handlers.

    Args:
        local_rank: given by ``idist.Parallel``.
        cfg: the validated config.
        run_dir: the run folder (already created and checked by rank 0's caller).
        resume_from: a training checkpoint to continue from, or None.
        launched: this process was spawned by the CLI's launcher, which forwards SIGINT/SIGTERM
            to it and aborts the run on a second one (``StopOnInterrupt(abort=False)``).

    Returns:
        ``{"metrics": {"train/mse": ..., "test/mse_f3": ...}, "epochs": n, "epoch_seconds": s, ...}``.

    Raises:
        TrainingDiverged: non-finite loss (files up to the last good epoch are intact).
        TrainingInterrupted: Ctrl-C or SIGTERM; a checkpoint to resume from was saved.
        CheckpointMismatch: ``resume_from`` does not fit this config.
    """
    rank = idist.get_rank()
    run_dir = Path(run_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    checkpoint = None
    if resume_from:  # a checkpoint that cannot continue this config fails before any work
        checkpoint = read_checkpoint(resume_from)
        check_resumable(checkpoint, model_args=setup_model(cfg).config, epochs=cfg.train.epochs,
                        patience=cfg.handlers.early_stopping.patience if cfg.handlers.early_stopping.enabled
                        else None, source=resume_from)
    manual_seed(cfg.seed)
    device = _device(cfg.device)

    data = setup_data(cfg)
    model = idist.auto_model(setup_model(cfg).to(device))
    net = model.module if hasattr(model, "module") else model
    optimizer = idist.auto_optim(
        setup_optimizer(cfg.train.optimizer, model.parameters(), lr=cfg.train.lr,
                        weight_decay=cfg.train.weight_decay, momentum=cfg.train.momentum)
    )
    loss_fn = setup_loss(cfg.train.loss)
    trainer = create_trainer(model, optimizer, loss_fn, tbptt_steps=cfg.train.tbptt_steps, update=cfg.train["update"],
                             grad_clip=cfg.train.grad_clip, device=device, execution=cfg.train.engine,
                             chunk_steps=cfg.train.chunk_steps)
    freqs = list(cfg.data.frequencies)
    val_evaluator = create_evaluator(model, build_metrics(freqs, device=device), device=device, execution=cfg.eval.engine)
    final_evaluator = create_evaluator(model, build_metrics(freqs, device=device), device=device,
                                       execution=cfg.eval.engine)
    h = cfg.handlers
    if h.terminate_on_nan:
        attach_terminate_on_nan(trainer)  # first, so that nothing after it sees a NaN iteration
    RunningAverage(output_transform=lambda o: o["loss"]).attach(trainer, "running_loss")
    epoch_loss = Average(output_transform=lambda o: o["loss"])
    epoch_loss.attach(trainer, "epoch_loss")
    epoch_timer = Timer()  # training time of an epoch, paused before validation and checkpoints
    epoch_timer.attach(trainer, start=Events.EPOCH_STARTED, pause=Events.EPOCH_COMPLETED)
    logger.info("Training path: %s (tbptt_steps=%d, update=%s), LSTM kernel: %s", trainer.execution,
                cfg.train.tbptt_steps, cfg.train["update"], native.describe(device))

    history = MetricsHistory()
    train_data = SkipBatches(data["train_loader"])
    train_sampler = data["train_loader"].sampler
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: train_sampler.set_epoch(e.state.epoch - 1))

    n_steps = data["datasets"]["train"].n_steps
    spe = steps_per_epoch(len(train_data), n_steps, cfg.train.tbptt_steps, cfg.train["update"])
    sched_cfg = h.lr_scheduler
    scheduler = setup_lr_scheduler(
        trainer, optimizer, name=sched_cfg.name, lr=cfg.train.lr, epochs=cfg.train.epochs, steps_per_epoch=spe,
        update=cfg.train["update"], warmup_epochs=sched_cfg.warmup_epochs, min_lr=sched_cfg.min_lr,
        step_size=sched_cfg.step_size, gamma=sched_cfg.gamma, val_evaluator=val_evaluator,
        monitor=sched_cfg.monitor, mode=metric_direction(sched_cfg.monitor), patience=sched_cfg.patience,
        factor=sched_cfg.factor,
    )
    stopper = None
    if h.early_stopping.enabled:  # on the evaluator before the checkpoints: "last" holds this epoch's count
        stopper = attach_early_stopping(trainer, val_evaluator, monitor=h.early_stopping.monitor,
                                        patience=h.early_stopping.patience, min_delta=h.early_stopping.min_delta)

    def validate(engine: Engine) -> None:
        values = {"train/loss": engine.state.metrics["epoch_loss"], "lr": optimizer.param_groups[0]["lr"],
                  "time/epoch_seconds": epoch_timer.value()}
        if engine.state.epoch % cfg.eval.every == 0 or engine.state.epoch == cfg.train.epochs:
            values.update(_prefixed("val", val_evaluator.run(data["eval_loaders"]["val"]).metrics))
        history.record(engine.state.epoch, values)
        shown = " ".join(f"{k}={v:.4g}" for k, v in values.items() if "_f" not in k)
        logger.info("Epoch %d/%d %s", engine.state.epoch, cfg.train.epochs, shown)
        if rank == 0:
            history.save(run_dir / "history.json")

    trainer.add_event_handler(Events.EPOCH_COMPLETED, validate)

    model_args = FixedState(net.config, "model arguments")
    config_state = FixedState(OmegaConf.to_container(cfg, resolve=True), "config")
    to_save: dict[str, Any] = {"model": model, "model_args": model_args, "optimizer": optimizer,
                               "trainer": trainer, "history": history, "rng": RNGState(),
                               "epoch_loss": epoch_loss, "config": config_state}
    if scheduler is not None:
        to_save["lr_scheduler"] = scheduler
    if stopper is not None:
        to_save["early_stopping"] = stopper
    checkpoints = attach_checkpoints(
        trainer, val_evaluator, to_save, {"model": model, "model_args": model_args}, run_dir / "checkpoints",
        enabled=h.checkpoint.enabled, monitor=h.checkpoint.monitor, n_saved=h.checkpoint.n_saved,
        every=h.checkpoint.every,
    )
    if stopper is not None and h.early_stopping.restore_best and "best" not in checkpoints:
        logger.warning("handlers.early_stopping.restore_best needs handlers.checkpoint.enabled: the final "
                       "evaluation uses the last weights.")
    if rank == 0:
        if h.tensorboard.enabled:
            attach_tensorboard(trainer, val_evaluator, optimizer, run_dir / "tb", every=h.tensorboard.every,
                               window_every=h.tensorboard.window_every, histograms=h.tensorboard.histograms,
                               model=net)
        if h.progress_bar:
            attach_progress(trainer)
    load_extra_handlers(h.extra, trainer, val_evaluator, cfg)
    interrupt = StopOnInterrupt(trainer, abort=not launched)  # after everything: its EPOCH_COMPLETED check comes last

    if checkpoint is not None:
        resume_from_checkpoint(checkpoint, to_save, trainer, train_data, source=resume_from)
        checkpointer_states(checkpoints, checkpoint)
        changed = config_changes(config_state.loaded or {}, config_state.value)
        if changed:
            logger.warning("Resuming with changed settings: %s", "; ".join(changed))

    try:
        trainer.run(train_data, max_epochs=cfg.train.epochs)
    finally:
        interrupt.close()

    finished = trainer.state.iteration >= cfg.train.epochs * trainer.state.epoch_length or (
        stopper is not None and stopper.counter >= stopper.patience)
    if interrupt.requested and finished:  # nothing left to resume: finish with the final evaluation
        logger.warning("%s after the last epoch: finishing the final evaluation (%s again to abort).",
                       interrupt.label, "press" if interrupt.signum == signal.SIGINT else "send it")
    elif interrupt.requested:
        checkpoints["interrupted"](trainer)
        saved = checkpoints["interrupted"].last_checkpoint
        raise TrainingInterrupted(f"Training interrupted by {interrupt.label} at epoch {trainer.state.epoch}, "
                                  f"iteration {trainer.state.iteration}", str(saved) if saved else None,
                                  interrupt.signum or signal.SIGINT)
    if h.terminate_on_nan and not _finite(trainer):
        last = checkpoints.get("last")
        if last is None:
            kept = " No checkpoint was kept (handlers.checkpoint.enabled is false)."
        elif last.last_checkpoint is None:
            kept = " No checkpoint had been written yet."
        else:
            kept = f" The last good checkpoint is {last.last_checkpoint}."
        raise TrainingDiverged(
            f"Loss became {trainer.state.output['loss']} at epoch {trainer.state.epoch}, iteration "
            f"{trainer.state.iteration}; training stopped.{kept} Lower train.lr or set train.grad_clip."
        )

    if stopper is not None and h.early_stopping.restore_best and "best" in checkpoints:
        best = checkpoints["best"].last_checkpoint  # the highest score of the files kept
        if best is not None:
            logger.info("Restoring the best weights from %s", best)
            net.load_state_dict(torch.load(best, map_location=device, weights_only=True)["model"])

    final: dict[str, float] = {}
    for split, loader in data["eval_loaders"].items():
        final.update(_prefixed(split, final_evaluator.run(loader).metrics))
    if rank == 0:
        _write_json(run_dir / "metrics.json", final)
        history.save(run_dir / "history.json")
        final_model = {"model": net.state_dict(), "model_args": net.config,
                       "config": OmegaConf.to_container(cfg, resolve=True)}
        atomic_write(run_dir / "model.pt", lambda f: torch.save(final_model, f))
        if cfg.eval.report and idist.get_world_size() > 1:
            _report_in_own_process(run_dir, device)
        elif cfg.eval.report:
            from ignite_lstm.report import write_report  # matplotlib only when a report is wanted

            write_report(run_dir, net, data["datasets"], frequencies=list(cfg.data.frequencies), fs=cfg.data.fs,
                         history=history.state_dict(), device=device, batch_size=cfg.eval.batch_size)
    return {"metrics": final, "epochs": trainer.state.epoch, "execution": trainer.execution,
            "epoch_seconds": _mean(history.series("time/epoch_seconds")), "run_dir": str(run_dir)}


def _report_in_own_process(run_dir: Path, device: torch.device) -> None:
    """``python -m ignite_lstm.evaluate RUN_DIR``: the report of model.pt from a process of its own.

    The report evaluates whole splits on one process, but inside the process group every
    metric all-reduces its sums when computed, which rank 0 alone cannot do.
    """
    done = subprocess.run([sys.executable, "-m", "ignite_lstm.evaluate", str(run_dir), "--device", str(device)],
                          capture_output=True, text=True)
    if done.returncode:
        logger.warning("The report could not be written (python -m ignite_lstm.evaluate %s):\n%s", run_dir,
                       done.stderr.strip())
    else:
        logger.info("Report written to %s", run_dir / "report")


def _finite(engine: Engine) -> bool:
    output = engine.state.output
    return not isinstance(output, dict) or math.isfinite(output.get("loss", 0.0))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
