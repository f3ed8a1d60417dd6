"""A sequence-length curriculum: train on the first L steps of each sequence, L growing by stages up to T.

Long-horizon recurrent training often learns nothing from whole sequences at first
(the gradient through thousands of steps is noise) but learns short horizons quickly
and then extends them. ``Curriculum`` is a stateful Ignite handler that cuts every
training batch (and every batch of the validation evaluator that decides the advance)
to its first L steps, L being the current stage's length; the last stage is the
whole sequence, T. Cutting, not masking: a stage of L steps costs L steps of work.

A stage ends by one of two rules:

- the epoch rule: after ``epochs_per_stage`` epochs;
- the metric rule: at the first validation, once the stage has lasted ``min_epochs``
  epochs, whose ``metric`` (computed on the first L steps) beats ``threshold``, or
  after ``max_epochs`` epochs at the latest.

With the metric rule, a longer stage can fail where the shorter one passed: the first
steps at the new length pull the model into a solution it does not leave (in the
signal task, the slowest oscillator's output falls to zero and stays there for
thousands of epochs). ``retry_after`` and ``retries`` undo that: a stage after the
first that has not passed within ``retry_after`` epochs starts again from the model
and optimizer state it started with (a snapshot taken at every stage change), with the
batch order of the epochs to come, up to ``retries`` times; then ``max_epochs``, if
any, ends it. The first stage is not retried: it starts from the initial weights.

The decision for epoch E is taken when epoch E + 1 starts, from what the end of
epoch E recorded (the stage, its epochs, that epoch's validation score). Every
checkpoint written at the end of epoch E holds exactly that, so a resumed run takes
the same decision; a mid-epoch checkpoint holds the stage already decided, and
deciding again when the resumed epoch restarts changes nothing. On several processes
the decision is rank 0's, broadcast to all, so that every rank cuts the same L.

With ``follow_tbptt`` the truncated-BPTT window follows L (full-window BPTT in every
stage: ``engines.set_tbptt_steps``); otherwise the trainer keeps its window (a window
longer than L is just L).

What compares validation scores over epochs (the best checkpoint, early stopping,
the plateau schedule) must not compare a short stage's scores with full-length
ones: give them ``curriculum.final_stage_only`` as their event filter, and they count
the last stage's validations only (``trainers.attach_handlers`` does).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

import ignite.distributed as idist
from ignite.engine import Engine, Events

from ignite_lstm.engine.attributes import run_state
from ignite_lstm.engine.batches import parse_batch
from ignite_lstm.engine.carry import CarryingEngine
from ignite_lstm.engine.factories import set_tbptt_steps
from ignite_lstm.handlers.common import monitor_mode

__all__ = ["Curriculum", "check_lengths", "cut_batch", "final_tbptt_steps", "setup_curriculum", "stage_lengths"]

logger = logging.getLogger("ignite_lstm")

_STAY, _ADVANCE, _RETRY = 0, 1, 2  # what an epoch starts with (broadcast from rank 0 as a float)


def stage_lengths(
    n_steps: int, lengths: Sequence[int] = (), start: int | None = None, factor: float = 2.0
) -> list[int]:
    """The stages' lengths in steps: ``lengths``, or ``start, start * factor, ...`` below ``n_steps``; then ``n_steps``.

    Args:
        n_steps: the full length T of the sequences.
        lengths: increasing lengths, each in [1, T]; T is added as the last stage unless it is already last.
        start: with no ``lengths``: the first stage's length, each next one ``factor`` times longer (rounded).
        factor: the growth per stage (> 1).

    Returns:
        The increasing stage lengths, ending with ``n_steps``.

    Raises:
        ValueError: lengths not increasing or outside [1, T], neither or both of lengths and start.

    Example:
        >>> stage_lengths(10000, start=250)
        [250, 500, 1000, 2000, 4000, 8000, 10000]
        >>> stage_lengths(1000, lengths=[100, 300])
        [100, 300, 1000]
    """
    if bool(lengths) == (start is not None):
        raise ValueError(
            "Arguments lengths and start: give exactly one of them (lengths, e.g. [250, 500, 1000], or start and factor)."
        )
    if start is not None:
        if not factor > 1:
            raise ValueError(f"Argument factor should be greater than 1, got {factor}.")
        if not 1 <= start <= n_steps:
            raise ValueError(f"Argument start should be between 1 and the sequence length T = {n_steps}, got {start}.")
        lengths, k = [], 0
        while round(start * factor**k) < n_steps:
            if not lengths or round(start * factor**k) > lengths[-1]:
                lengths.append(round(start * factor**k))
            k += 1
    stages = check_lengths(lengths, n_steps) if lengths else []  # start = T: the full length only
    return stages if stages and stages[-1] == n_steps else [*stages, n_steps]


def check_lengths(lengths: Sequence[int], n_steps: int | None = None) -> list[int]:
    """The one check of a curriculum's stage lengths (``Curriculum``, ``stage_lengths`` and the config use it).

    Args:
        lengths: the stages' lengths in steps.
        n_steps: the sequence length T that bounds them, where it is known.

    Returns:
        The lengths as ints.

    Raises:
        ValueError: empty, not increasing, below 1 or above ``n_steps``.
    """
    stages = [int(v) for v in lengths]
    bound = n_steps if n_steps is not None else float("inf")
    if not stages or any(b <= a for a, b in zip(stages, stages[1:])) or not all(1 <= v <= bound for v in stages):
        within = f"each between 1 and the sequence length T = {n_steps}" if n_steps is not None else "each >= 1"
        raise ValueError(f"Argument lengths should increase, {within}, got {list(lengths)}.")
    return stages


def cut_batch(batch: Any, steps: int) -> Any:
    """The first ``steps`` steps of a batch ``(x, y)``, ``(x, y, mask)``, ``(x, y, mask, reset)`` or mapping (views).

    Args:
        batch: x (B, T, F), y (B, T, O) and optionally a mask (B, T) and a reset (B,), as
            ``batches.parse_batch`` reads them.
        steps: how many steps to keep.

    Returns:
        The batch itself when it has at most ``steps`` steps, else a list (or, for a mapping, a dict)
        of x (B, steps, F), y (B, steps, O), the mask (B, steps) and the reset (B,) as given.

    Example:
        >>> x, y = cut_batch((torch.zeros(2, 100, 5), torch.zeros(2, 100, 1)), 30)
        >>> x.shape
        torch.Size([2, 30, 5])
    """
    x, y, mask, reset = parse_batch(batch)
    if x.shape[1] <= steps:
        return batch
    parts = {"x": x[:, :steps], "y": y[:, :steps], "mask": None if mask is None else mask[:, :steps], "reset": reset}
    if isinstance(batch, Mapping):
        return {k: v for k, v in parts.items() if v is not None}
    values = list(parts.values())
    while values[-1] is None:  # (x, y) and (x, y, mask) keep their form
        values.pop()
    return values


class Curriculum:
    """Train on the first ``length`` steps of each sequence, stage by stage up to the full length.

    A stateful handler (``state_dict``/``load_state_dict``: put it in the checkpoint's
    ``to_save``); ``attach`` puts it on the engines. ``trainer.state.curriculum_length``
    is the length the trainer trains at (a TensorBoard scalar, see ``attach_tensorboard``).

    Args:
        lengths: the stages' lengths, increasing, the last one the full length (``stage_lengths``).
        epochs_per_stage: the epoch rule: every stage but the last lasts this many epochs.
        metric: the metric rule: the validation metric (on the first L steps) that decides.
        threshold: the value ``metric`` must beat: lower for a metric where lower is better.
        mode: ``"min"`` or ``"max"``, the metric's direction (None: ``metric_direction(metric)``).
        min_epochs: metric rule: epochs a stage lasts at least.
        max_epochs: metric rule: epochs after which a stage ends anyway (None: no limit).
        follow_tbptt: the trainer's window length follows L (``set_tbptt_steps``).
        lr_factor: at every stage change the learning rate of each of the optimizer's
            parameter groups is multiplied by this (1: unchanged; ``attach`` needs the
            optimizer otherwise). A longer stage has larger gradients and a new loss
            surface; a smaller step keeps what the shorter stages learned. It lives in
            the optimizer's ``param_groups``, so an optimizer checkpoint resumes it; a
            schedule that sets the rate every step (cosine, onecycle, ...) would undo it.
        reset_optimizer: at every stage change the optimizer's per-parameter state (Adam's
            moments, SGD's momentum) is cleared, its rate kept: the moments gathered on the
            shorter stage's gradients would otherwise set the size of the first steps on the
            longer one, whose gradients are several times larger (``attach`` needs the optimizer).
        retry_after: metric rule: a stage after the first that has not passed after this
            many epochs starts again from the state it started with (None: never;
            ``attach`` then needs the model and the optimizer). Counted from the stage's
            (or the retry's) first epoch; ``min_epochs`` <= ``retry_after``.
        retries: how many times each stage may start again (``retry_after``); then the stage
            goes on until it passes or ``max_epochs`` ends it.

    The snapshot of a stage's start (the model's and the optimizer's ``state_dict``, copied)
    is part of ``state_dict``, so a checkpoint resumes it: retries cost one copy of the
    model and its optimizer state in memory and in every checkpoint.

    Example:
        >>> curriculum = Curriculum(stage_lengths(1000, start=100), metric="mse", threshold=0.01, max_epochs=50,
        ...                         follow_tbptt=True)
        >>> curriculum.attach(trainer, val_evaluator)
        >>> to_save["curriculum"] = curriculum
    """

    optimizer: Any  # attach's optimizer (None before attach, or when none was given)
    model: Any  # attach's model (what a retry restores; None when none was given)
    score: float | None  # the metric of the stage's last validation (None: none yet)

    def __init__(
        self,
        lengths: Sequence[int],
        *,
        epochs_per_stage: int | None = None,
        metric: str | None = None,
        threshold: float | None = None,
        mode: str | None = None,
        min_epochs: int = 1,
        max_epochs: int | None = None,
        follow_tbptt: bool = False,
        lr_factor: float = 1.0,
        reset_optimizer: bool = False,
        retry_after: int | None = None,
        retries: int = 0,
    ) -> None:
        self.lengths = check_lengths(lengths)
        if (epochs_per_stage is None) == (metric is None):
            raise ValueError("Arguments epochs_per_stage and metric: give exactly one (the epoch or the metric rule).")
        if (metric is None) != (threshold is None):
            raise ValueError("Arguments metric and threshold go together.")
        for name, value in (
            ("epochs_per_stage", epochs_per_stage),
            ("min_epochs", min_epochs),
            ("max_epochs", max_epochs),
            ("retry_after", retry_after),
        ):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"Argument {name} should be a positive integer or None, got {value!r}.")
        self.epochs_per_stage, self.metric, self.threshold = epochs_per_stage, metric, threshold
        self.mode = monitor_mode(metric, mode) if metric is not None else None
        if not (isinstance(lr_factor, (int, float)) and 0 < lr_factor <= 1):
            raise ValueError(f"Argument lr_factor should be in (0, 1], got {lr_factor!r}.")
        self.min_epochs, self.max_epochs, self.follow_tbptt = min_epochs, max_epochs, follow_tbptt
        self.lr_factor, self.optimizer, self.model = float(lr_factor), None, None
        if not (isinstance(retries, int) and retries >= 0):
            raise ValueError(f"Argument retries should be a non-negative integer, got {retries!r}.")
        if retry_after is not None:
            if metric is None:
                raise ValueError("Argument retry_after belongs to the metric rule: give metric and threshold.")
            if retry_after < min_epochs:
                raise ValueError(f"Argument retry_after ({retry_after}) should be >= min_epochs ({min_epochs}).")
            if max_epochs is not None and retries > 0 and max_epochs <= retry_after:
                raise ValueError(
                    f"Argument max_epochs ({max_epochs}) should be greater than retry_after ({retry_after}): "
                    f"it would end every stage before its first retry."
                )
        self.retry_after, self.retries, self.reset_optimizer = retry_after, retries, bool(reset_optimizer)
        self.stage, self.epochs_in_stage, self.score = 0, 0, None
        self.retried = [0] * len(self.lengths)  # how many times each stage started again
        self.best: float | None = None  # the stage's best score since it (re)started, for the log
        self.snapshot: dict[str, Any] | None = None  # the model and optimizer at the current stage's start

    @property
    def length(self) -> int:
        """The current stage's length L in steps."""
        return self.lengths[self.stage]

    @property
    def retrying(self) -> bool:
        """Whether a stage that does not pass may start again (``retry_after`` set and ``retries`` > 0)."""
        return self.retry_after is not None and self.retries > 0

    @property
    def final(self) -> bool:
        """Whether the current stage is the last one (the full length)."""
        return self.stage == len(self.lengths) - 1

    def final_stage_only(self, engine: Engine, event: int) -> bool:
        """Ignite event filter: True in the last stage only (for ``Events.COMPLETED(event_filter=...)``)."""
        return self.final

    def attach(
        self, trainer: Engine, val_evaluator: Engine | None = None, optimizer: Any = None, model: Any = None
    ) -> None:
        """Cut the batches of ``trainer`` (and of ``val_evaluator``, whose metric decides) to the current L.

        ``optimizer``: the one whose learning rate ``lr_factor`` scales at each stage change.
        ``model`` and ``optimizer``: what a retry (``retry_after``) restores to the stage's start.
        An engine that carries its state across batches (``carry_state=True``) is refused: the
        cut would drop the steps between a chunk's first L and the next chunk, which its lanes
        continue as if the series were contiguous.
        """
        for name, engine in (("trainer", trainer), ("val_evaluator", val_evaluator)):
            if isinstance(engine, CarryingEngine):
                raise ValueError(
                    f"Argument {name} carries its state across batches (carry_state=True): the curriculum "
                    f"cuts every batch to its first L steps, so lane i of the next batch would not continue "
                    f"where lane i was cut; use a curriculum with whole sequences (carry_state=False)."
                )
        if self.lr_factor != 1.0 and optimizer is None:
            raise ValueError(
                f"Argument optimizer is needed: lr_factor={self.lr_factor} scales its learning rate at "
                f"every stage change."
            )
        if self.reset_optimizer and optimizer is None:
            raise ValueError(
                "Argument optimizer is needed: reset_optimizer=True clears its state at every stage change."
            )
        if self.retrying and (model is None or optimizer is None):
            raise ValueError(
                f"Arguments model and optimizer are needed: retry_after={self.retry_after} restores them to "
                f"a stage's start."
            )
        self.optimizer, self.model = optimizer, model
        run_state(trainer).curriculum_length = self.length
        trainer.add_event_handler(Events.STARTED, self._apply, True)  # after a resume loaded the state
        trainer.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        trainer.add_event_handler(Events.GET_BATCH_COMPLETED, self._cut)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        trainer.add_event_handler(Events.COMPLETED, self._completed)
        if val_evaluator is not None:
            val_evaluator.add_event_handler(Events.GET_BATCH_COMPLETED, self._cut)
            if self.metric is not None:
                val_evaluator.add_event_handler(Events.COMPLETED, self._record)

    # ------------------------------------------------------------ handlers

    def _cut(self, engine: Engine) -> None:
        engine.state.batch = cut_batch(engine.state.batch, self.length)

    def _record(self, evaluator: Engine) -> None:
        assert self.metric is not None  # attach adds this handler only with a metric
        self.score = float(evaluator.state.metrics[self.metric])
        if math.isfinite(self.score) and (self.best is None or self._beats(self.score, self.best)):
            self.best = self.score

    def _beats(self, score: float, other: float) -> bool:
        return score < other if self.mode == "min" else score > other

    def _epoch_completed(self, _: Engine) -> None:
        self.epochs_in_stage += 1

    def _epoch_started(self, trainer: Engine) -> None:
        decision = self._due()
        if idist.get_world_size() > 1 and not self.final:  # rank 0's decision, on every rank
            decision = int(cast(float, idist.broadcast(float(decision), src=0)))
        self.score = None
        if decision == _ADVANCE:
            self.stage, self.epochs_in_stage, self.best = self.stage + 1, 0, None
            if self.lr_factor != 1.0:
                for group in self.optimizer.param_groups:
                    group["lr"] *= self.lr_factor
            if self.reset_optimizer:
                self.optimizer.state.clear()  # torch optimizers build a parameter's state again at its next step
            self.snapshot = None  # the last stage is not retried
            if self.retrying and not self.final:
                self.snapshot = {
                    "model": copy.deepcopy(self.model.state_dict()),
                    "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                }
        elif decision == _RETRY:
            self._retry()
        self._apply(trainer, decision == _ADVANCE)

    def _due(self) -> int:
        """What epoch E + 1 starts with: ``_STAY``, ``_ADVANCE`` or ``_RETRY`` (from what epoch E recorded)."""
        k = self.epochs_in_stage
        if self.final or k == 0:
            return _STAY
        if self.epochs_per_stage is not None:
            return _ADVANCE if k >= self.epochs_per_stage else _STAY
        if self.max_epochs is not None and k >= self.max_epochs:
            return _ADVANCE
        score = self.score
        assert self.threshold is not None  # the metric rule: __init__ takes metric and threshold together
        passed = score is not None and math.isfinite(score) and self._beats(score, self.threshold)
        if k >= self.min_epochs and passed:
            return _ADVANCE
        due = self.retry_after is not None and k >= self.retry_after  # a snapshot exists only when retrying
        return _RETRY if due and self.snapshot is not None and self.retried[self.stage] < self.retries else _STAY

    def _retry(self) -> None:
        """Start the stage again from its snapshot (model and optimizer, the rate included)."""
        assert self.snapshot is not None  # _due retries only with one
        best = "none" if self.best is None else f"{self.best:.4g}"
        self.retried[self.stage] += 1
        logger.warning(
            "Curriculum: stage %d of %d (%d steps) has not passed in %d epochs (best %s %s, threshold %g): "
            "starting it again from the state it started with (retry %d of %d)",
            self.stage + 1,
            len(self.lengths),
            self.length,
            self.epochs_in_stage,
            self.metric,
            best,
            self.threshold,
            self.retried[self.stage],
            self.retries,
        )
        self.model.load_state_dict(self.snapshot["model"])
        self.optimizer.load_state_dict(self.snapshot["optimizer"])
        self.epochs_in_stage, self.best = 0, None

    def _apply(self, trainer: Engine, log: bool) -> None:
        run_state(trainer).curriculum_length = self.length
        if self.follow_tbptt and getattr(trainer.state, "tbptt_steps", None) != self.length:
            set_tbptt_steps(trainer, self.length)
        if log:
            window = min(self.length, getattr(trainer.state, "tbptt_steps", self.length))
            rate = f", lr {self.optimizer.param_groups[0]['lr']:.3g}" if self.lr_factor != 1.0 else ""
            logger.info(
                "Curriculum: stage %d of %d, %d steps, tbptt %d%s",
                self.stage + 1,
                len(self.lengths),
                self.length,
                window,
                rate,
            )

    def _completed(self, trainer: Engine) -> None:
        if not self.final:
            logger.warning(
                "Curriculum: the run ended in stage %d of %d (%d of %d steps): the full length was never "
                "trained, and the best checkpoint and early stopping, which count full-length validations "
                "only, never started.",
                self.stage + 1,
                len(self.lengths),
                self.length,
                self.lengths[-1],
            )

    # ------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {
            "lengths": list(self.lengths),
            "stage": self.stage,
            "epochs_in_stage": self.epochs_in_stage,
            "score": self.score,
            "best": self.best,
            "retried": list(self.retried),
            "snapshot": self.snapshot,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if list(state["lengths"]) != self.lengths:
            raise ValueError(
                f"The checkpoint's curriculum has the stages {list(state['lengths'])}, this run's "
                f"{self.lengths}: resume with the same train.curriculum lengths."
            )
        self.stage, self.epochs_in_stage = int(state["stage"]), int(state["epochs_in_stage"])
        self.score = state["score"]
        # checkpoints written before retries existed have none of these
        self.best = state.get("best")
        self.retried = [int(v) for v in state.get("retried", [0] * len(self.lengths))]
        self.snapshot = state.get("snapshot")


def setup_curriculum(cfg: Any, n_steps: int) -> Curriculum | None:
    """The ``train.curriculum`` section as a ``Curriculum``.

    Args:
        cfg: the validated config.
        n_steps: the training sequences' length T.

    Returns:
        The ``Curriculum`` (not attached), or None when ``train.curriculum.enabled`` is false.
    """
    c = cfg.train.curriculum
    if not c.enabled:
        return None
    lengths = stage_lengths(n_steps, list(c.lengths), c.start, c.factor)
    return Curriculum(
        lengths,
        epochs_per_stage=c.epochs_per_stage,
        metric=c.metric,
        threshold=c.threshold,
        min_epochs=c.min_epochs,
        max_epochs=c.max_epochs,
        follow_tbptt=c.tbptt == "follow",
        lr_factor=c.lr_factor,
        reset_optimizer=c.reset_optimizer,
        retry_after=c.retry_after,
        retries=c.retries,
    )


def final_tbptt_steps(cfg: Any, n_steps: int) -> int:
    """The window length of the run's longest epochs (a curriculum's last stage).

    Args:
        cfg: the validated config.
        n_steps: the training sequences' length T.

    Returns:
        ``n_steps`` when a curriculum's window follows L, else ``train.tbptt_steps``.
    """
    c = cfg.train.curriculum
    return n_steps if c.enabled and c.tbptt == "follow" else cfg.train.tbptt_steps
