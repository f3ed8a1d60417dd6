"""From a validated config to the run's engines and their handlers.

``setup_trainer`` and ``setup_evaluators`` build the engines; ``attach_handlers``
attaches everything around the loop in the one order that works, written out as
``HANDLER_ORDER`` below: a handler's place in that list is its place on every event
it shares with another (Ignite calls the handlers of an event in the order they
were attached).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, EarlyStopping, Timer
from ignite.metrics import RunningAverage

from ignite_lstm.app.task.metrics import METRIC_NAMES, build_metrics
from ignite_lstm.checkpoint.resume import RNGState
from ignite_lstm.checkpoint.savers import FixedState, attach_checkpoints
from ignite_lstm.data.streams import StreamLoader
from ignite_lstm.engine.execution import AMP_MODES
from ignite_lstm.engine.factories import create_evaluator, create_trainer, epoch_loss_metric
from ignite_lstm.engine.losses import setup_loss
from ignite_lstm.handlers.common import (
    attach_early_stopping,
    attach_progress,
    attach_terminate_on_nan,
    load_extra_handlers,
)
from ignite_lstm.handlers.curriculum import Curriculum, final_tbptt_steps, setup_curriculum
from ignite_lstm.handlers.history import MetricsHistory
from ignite_lstm.handlers.interrupts import StopOnInterrupt
from ignite_lstm.handlers.schedules import setup_lr_scheduler, steps_per_epoch
from ignite_lstm.handlers.tensorboard import attach_tensorboard
from ignite_lstm.handlers.warmup import SkipFirstSteps
from ignite_lstm.metrics.directions import metric_direction

__all__ = ["setup_trainer", "setup_evaluators", "attach_handlers", "RunHandlers", "HANDLER_ORDER"]

logger = logging.getLogger("ignite_lstm")


def setup_trainer(cfg: Any, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> Engine:
    """``create_trainer`` with the ``train:`` settings."""
    t = cfg.train
    return create_trainer(
        model,
        optimizer,
        setup_loss(t.loss),
        tbptt_steps=t.tbptt_steps,
        update=t["update"],
        grad_clip=t.grad_clip,
        device=device,
        execution=t.execution,
        chunk_steps=t.chunk_steps,
        amp_dtype=AMP_MODES.get(t.amp),
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        carry_state=t.carry_state,
    )


def setup_evaluators(
    cfg: Any, model: torch.nn.Module, device: torch.device, *, carry_state: bool | None = None
) -> dict[str, Engine]:
    """``{"val": ..., "final": ...}``: validation (model selection) and the final evaluation.

    The final evaluator computes every metric per frequency (the report's tables);
    validation only the overall ones and ``mse`` per frequency, every epoch.

    Args:
        carry_state: evaluate streams chunk by chunk (``create_evaluator(..., carry_state=True)``);
            None: for ``data.layout: streams``, whose loaders ``setup_data`` makes. Whole
            sequences (``DataLoader`` batches of ``SignalDataset``) need False.
    """
    freqs = list(cfg.data.frequencies)
    carry = cfg.data.layout == "streams" if carry_state is None else carry_state
    make = lambda per: create_evaluator(
        model,
        build_metrics(freqs, per_frequency=per, device=device),  # noqa: E731
        device=device,
        execution=cfg.eval.execution,
        amp_dtype=AMP_MODES.get(cfg.train.amp),
        carry_state=carry,
    )
    evaluators = {"val": make(("mse",)), "final": make(METRIC_NAMES)}
    if cfg.eval.warm_up_steps:  # each sequence's first steps warm the state up (streams: counted per lane)
        for evaluator in evaluators.values():
            SkipFirstSteps(cfg.eval.warm_up_steps).attach(evaluator)
    return evaluators


@dataclass
class RunHandlers:
    """What ``attach_handlers`` attached, for resume, the outcome and the final steps."""

    to_save: dict[str, Any] = field(default_factory=dict)
    checkpoints: dict[str, Checkpoint] = field(default_factory=dict)
    history: MetricsHistory = field(default_factory=MetricsHistory)
    stopper: EarlyStopping | None = None
    interrupt: StopOnInterrupt | None = None
    timer: Timer | None = None
    config_state: FixedState | None = None
    curriculum: Curriculum | None = None


@dataclass
class _Run:
    cfg: Any
    trainer: Engine
    val: Engine
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    data: dict[str, Any]
    run_dir: Path
    extra: Sequence[Callable]
    abort: bool
    out: RunHandlers


def _nan_stop(r: _Run) -> None:  # first, so that nothing after it sees a NaN iteration
    if r.cfg.handlers.terminate_on_nan:
        attach_terminate_on_nan(r.trainer)


def _epoch_metrics(r: _Run) -> None:
    RunningAverage(output_transform=lambda o: o["loss"]).attach(r.trainer, "running_loss")
    r.out.to_save["epoch_loss"] = epoch_loss_metric(r.trainer)  # its running sums: a mid-epoch resume is exact
    if r.trainer.state.scaler is not None:  # float16: the loss scale carries over a resume
        r.out.to_save["grad_scaler"] = r.trainer.state.scaler
    r.out.timer = Timer()  # training time of an epoch, paused before validation and checkpoints
    r.out.timer.attach(r.trainer, start=Events.EPOCH_STARTED, pause=Events.EPOCH_COMPLETED)
    loader = r.data["train_loader"]
    if isinstance(loader, StreamLoader):  # its position (and the trainer's lanes): a mid-epoch resume is exact
        r.out.to_save["train_loader"] = loader
    # a new order per epoch, the same after a resume (a StreamLoader keeps its loaded position)
    set_epoch = loader.set_epoch if isinstance(loader, StreamLoader) else loader.sampler.set_epoch
    r.trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: set_epoch(e.state.epoch - 1))


def _curriculum(r: _Run) -> None:
    # Before the plateau schedule, early stopping and the best checkpoint, which take its filter; before
    # the validation, which saves the epoch's history with its length in it; before the checkpoints,
    # which save its state. Its decision for epoch E is taken when epoch E + 1 starts, from what E's
    # checkpoints hold, so among the EPOCH_COMPLETED handlers its place matters for nothing else.
    n_steps = r.data["datasets"]["train"].n_steps
    r.out.curriculum = curriculum = setup_curriculum(r.cfg, n_steps)
    if curriculum is not None:
        curriculum.attach(r.trainer, r.val, r.optimizer, r.model)
        r.out.to_save["curriculum"] = curriculum
        r.trainer.add_event_handler(
            Events.EPOCH_COMPLETED,
            lambda e: r.out.history.record(e.state.epoch, {"train/curriculum_length": e.state.curriculum_length}),
        )


def _full_length_only(r: _Run) -> Callable | None:
    """The event filter of what compares validations over epochs: a curriculum's last stage only."""
    return r.out.curriculum.final_stage_only if r.out.curriculum is not None else None


def _lr_schedule(r: _Run) -> None:
    cfg, s = r.cfg, r.cfg.handlers.lr_scheduler
    loader = r.data["train_loader"]
    n_steps = r.data["datasets"]["train"].n_steps  # the longest epochs: a curriculum's last stage
    batch_steps = loader.chunk_steps if isinstance(loader, StreamLoader) else n_steps
    spe = steps_per_epoch(len(loader), batch_steps, final_tbptt_steps(cfg, n_steps), cfg.train["update"])
    scheduler = setup_lr_scheduler(
        r.trainer,
        r.optimizer,
        name=s.name,
        lr=cfg.train.lr,
        epochs=cfg.train.epochs,
        steps_per_epoch=spe,
        update=cfg.train["update"],
        warmup_epochs=s.warmup_epochs,
        min_lr=s.min_lr,
        step_size=s.step_size,
        gamma=s.gamma,
        val_evaluator=r.val,
        monitor=s.monitor,
        mode=metric_direction(s.monitor),
        patience=s.patience,
        factor=s.factor,
        event_filter=_full_length_only(r),
    )
    if scheduler is not None:
        r.out.to_save["lr_scheduler"] = scheduler


def _early_stopping(r: _Run) -> None:  # on the evaluator before the checkpoints: "last" holds this epoch's count
    es = r.cfg.handlers.early_stopping
    if es.enabled:
        r.out.stopper = attach_early_stopping(
            r.trainer,
            r.val,
            monitor=es.monitor,
            patience=es.patience,
            min_delta=es.min_delta,
            event_filter=_full_length_only(r),
        )
        r.out.to_save["early_stopping"] = r.out.stopper


def _validation(r: _Run) -> None:  # before the checkpoints: they save this epoch's history
    cfg, history, timer = r.cfg, r.out.history, r.out.timer

    def validate(engine: Engine) -> None:
        values = {
            "train/loss": engine.state.metrics["epoch_loss"],
            "lr": r.optimizer.param_groups[0]["lr"],
            "time/epoch_seconds": timer.value(),
        }
        if engine.state.epoch % cfg.eval.every == 0 or engine.state.epoch == cfg.train.epochs:
            metrics = r.val.run(r.data["eval_loaders"]["val"]).metrics
            values.update({f"val/{k}": float(v) for k, v in metrics.items()})
        history.record(engine.state.epoch, values)
        shown = " ".join(f"{k}={v:.4g}" for k, v in values.items() if "_f" not in k)
        logger.info("Epoch %d/%d %s", engine.state.epoch, cfg.train.epochs, shown)
        if idist.get_rank() == 0:
            history.save(r.run_dir / "history.json")

    r.trainer.add_event_handler(Events.EPOCH_COMPLETED, validate)


def _checkpoints(r: _Run) -> None:
    from omegaconf import OmegaConf

    net = r.model.module if hasattr(r.model, "module") else r.model
    model_args = FixedState(net.config, "model arguments")
    r.out.config_state = FixedState(OmegaConf.to_container(r.cfg, resolve=True), "config")
    r.out.to_save.update(
        {
            "model": r.model,
            "model_args": model_args,
            "optimizer": r.optimizer,
            "trainer": r.trainer,
            "history": r.out.history,
            "rng": RNGState(),
            "config": r.out.config_state,
        }
    )
    c = r.cfg.handlers.checkpoint
    r.out.checkpoints = attach_checkpoints(
        r.trainer,
        r.val,
        r.out.to_save,
        {"model": r.model, "model_args": model_args},
        r.run_dir / "checkpoints",
        enabled=c.enabled,
        monitor=c.monitor,
        n_saved=c.n_saved,
        every=c.every,
        best_filter=_full_length_only(r),
    )
    if r.out.stopper is not None and r.cfg.handlers.early_stopping.restore_best and "best" not in r.out.checkpoints:
        logger.warning(
            "handlers.early_stopping.restore_best needs handlers.checkpoint.enabled: the final "
            "evaluation uses the last weights."
        )


def _loggers(r: _Run) -> None:  # rank 0 only: files and the console
    h = r.cfg.handlers
    if idist.get_rank() != 0:
        return
    if h.tensorboard.enabled:
        net = r.model.module if hasattr(r.model, "module") else r.model
        attach_tensorboard(
            r.trainer,
            r.val,
            r.optimizer,
            r.run_dir / "tb",
            every=h.tensorboard.every,
            window_every=h.tensorboard.window_every,
            histograms=h.tensorboard.histograms,
            model=net,
            epoch_state=("curriculum_length",) if r.out.curriculum is not None else (),
        )
    if h.progress_bar:
        attach_progress(r.trainer)


def _extra(r: _Run) -> None:  # the user's handlers, after every built-in one
    load_extra_handlers(r.cfg.handlers.extra, r.trainer, r.val, r.cfg)
    for fn in r.extra:
        fn(r.trainer, r.val, r.cfg)


def _interrupt(r: _Run) -> None:  # last: its EPOCH_COMPLETED check comes after everything
    r.out.interrupt = StopOnInterrupt(r.trainer, abort=r.abort)


HANDLER_ORDER: tuple[Callable[[_Run], None], ...] = (
    _nan_stop,
    _epoch_metrics,
    _curriculum,
    _lr_schedule,
    _early_stopping,
    _validation,
    _checkpoints,
    _loggers,
    _extra,
    _interrupt,
)
"""The order in which ``attach_handlers`` attaches; each entry's comment says why it stands there."""


def attach_handlers(
    trainer: Engine,
    val_evaluator: Engine,
    cfg: Any,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data: dict[str, Any],
    run_dir: str | Path,
    extra: Sequence[Callable[[Engine, Engine, Any], None]] = (),
    abort_on_second_signal: bool = True,
) -> RunHandlers:
    """Attach the ``handlers:`` section to the engines, in ``HANDLER_ORDER``.

    Args:
        trainer: from ``setup_trainer``.
        val_evaluator: ``setup_evaluators(...)["val"]``.
        cfg: the validated config.
        model: the (possibly DDP-wrapped) model; optimizer: its optimizer.
        data: ``setup_data(cfg)``.
        run_dir: the run folder (checkpoints, history, TensorBoard).
        extra: more ``fn(trainer, evaluator, cfg)`` called after ``handlers.extra``.
        abort_on_second_signal: a second Ctrl-C/SIGTERM aborts at once (False for ranks whose
            launcher decides that, see ``StopOnInterrupt``).

    Returns:
        ``RunHandlers``: the checkpointable objects (``to_save``), the checkpoint savers,
        the history, early stopping, the interrupt handler (call ``close()`` after the run).
    """
    r = _Run(
        cfg, trainer, val_evaluator, model, optimizer, data, Path(run_dir), extra, abort_on_second_signal, RunHandlers()
    )
    for attach in HANDLER_ORDER:
        attach(r)
    return r.out
