"""The savers that write a run's checkpoint files (``attach_checkpoints``).

Files are written by Ignite's ``Checkpoint`` through a ``DiskSaver`` that writes
atomically, and read back with ``torch.load(weights_only=True)``, so every entry is
made of tensors, numbers, strings, lists and dicts only. Continuing a run from one
is ``resume``'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver, global_step_from_engine

from ignite_lstm._internal.atomic import atomic_write
from ignite_lstm.checkpoint.files import TRAINING_KINDS, FixedState
from ignite_lstm.checkpoint.run_checkpoints import RunCheckpoints, resumable_objects
from ignite_lstm.handlers.common import check_monitor, monitor_mode, score_function

__all__ = ["attach_checkpoints"]

logger = logging.getLogger(__name__)


def _with_model_args(objects: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``objects`` with the ``"model"``'s constructor arguments as ``model_args``, where it has a
    ``config`` (``StatefulLSTM``) and ``objects`` no ``model_args`` of its own."""
    out = dict(objects)
    config = getattr(out.get("model"), "config", None)
    if "model_args" not in out and isinstance(config, Mapping):
        out["model_args"] = FixedState(config, "model arguments")
    return out


class _SaveThenRemove(DiskSaver):
    """``DiskSaver`` that deletes the file a new one replaces only once the new one is written.

    Ignite's ``Checkpoint`` removes the oldest file before saving the next; if that save
    fails (a full disk), the run would be left without its last good checkpoint. Files are
    written by ``atomic_write``: with the umask's mode (Ignite's temporary file makes them
    0644 whatever the umask), and a failed write leaves no temporary file behind.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: list[str] = []

    def remove(self, filename: str) -> None:
        self._pending.append(filename)

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        pending, self._pending = self._pending, []
        if idist.get_rank() == self.save_on_rank:  # on failure the old files stay
            atomic_write(self.dirname / filename, lambda f: torch.save(checkpoint, f, **self.kwargs))
        for old in pending:
            if old != filename and (self.dirname / old).exists():
                super().remove(old)


class _PassedInterrupted:
    """Remove the interrupted file a resumed run came from once a newer training file is written.

    The run resumed from ``interrupted_checkpoint_<i>.pt`` (its saver got the file back with the
    bookkeeping); once it has saved a ``last_`` or ``epoch_`` file of a later iteration the
    interrupted one is stale, and ``find_checkpoint`` would no longer pick it. Without those savers
    (``enabled=False``) it is the run's only training file: it stays, and the log says why, once.
    """

    def __init__(self, checkpoints: Mapping[str, Checkpoint], saver: DiskSaver) -> None:
        self.checkpoints, self.saver, self.said = checkpoints, saver, False

    def __call__(self, trainer: Engine) -> None:
        interrupted = self.checkpoints["interrupted"]
        mine = interrupted.state_dict()["_saved"]  # [(iteration, file name)]
        if not mine:
            return
        newer = [
            p for k in ("last", "epoch") if k in self.checkpoints for p, _ in self.checkpoints[k].state_dict()["_saved"]
        ]
        passed = [name for step, name in mine if newer and step < max(newer)]
        if not passed:
            if not newer and not self.said:
                self.said = True
                logger.info(
                    "Kept %s: checkpoints are off apart from the interrupted one, so it is this run's only file "
                    "to resume from.",
                    ", ".join(name for _, name in mine),
                )
            return
        if idist.get_rank() == self.saver.save_on_rank:
            for name in passed:
                if (self.saver.dirname / name).exists():
                    DiskSaver.remove(self.saver, name)
        interrupted.reset()
        logger.info("Removed %s: the resumed run has saved past it.", ", ".join(passed))


def attach_checkpoints(
    trainer: Engine,
    val_evaluator: Engine,
    to_save: dict[str, Any],
    best_objects: Mapping[str, Any],
    directory: str | Path,
    *,
    enabled: bool = True,
    monitor: str = "mse",
    n_saved: int = 1,
    every: int = 0,
    mode: str | None = None,
    best_filter: Callable[[Engine, int], bool] | None = None,
) -> RunCheckpoints:
    """Best model (by the validation ``monitor``), last training state, every ``every`` epochs, and Ctrl-C.

    Files go to ``directory`` through a ``DiskSaver`` that writes a temporary file and
    renames it into place (a crash never leaves a half-written checkpoint, a failed
    write no temporary file; the mode follows the umask), rank 0 only; a file replaced
    by a newer one is deleted after the newer one is written, so a failed save keeps
    the previous file:

    - ``best_checkpoint_<iteration>_<score>.pt``: ``best_objects`` (model and its
      arguments, readable by ``load_model``) after each validation that beats the
      ``n_saved`` best so far. The score is the metric, negated for a metric where
      lower is better (``neg_val_mse=-0.0123``); a NaN never beats another.
    - ``last_checkpoint_<iteration>.pt``: ``to_save`` after every epoch.
    - ``epoch_checkpoint_<iteration>.pt``: ``to_save`` every ``every`` epochs (0: off).
    - ``interrupted_checkpoint_<iteration>.pt``: ``to_save``, written on demand by
      calling ``checkpoints["interrupted"](trainer)`` (also when ``enabled`` is False);
      a run resumed from it removes it once it has saved a later ``last``/``epoch`` file
      (with ``enabled`` False it stays, the log says why).

    Where ``best_objects`` or ``to_save`` hold a ``"model"`` with a ``config`` (the
    constructor arguments of a ``StatefulLSTM``) and no ``"model_args"``, its files also
    hold ``model_args``, so that ``load_model`` rebuilds the model from them.

    Where ``to_save`` holds the trainer, its files also hold the random generators
    (``rng``: torch, numpy, Python at the save; ``rng_epoch_start``: the same when the
    epoch started, before the data loader drew its order), unless ``to_save`` has
    entries of those names. Every training file also holds each saver's list of files
    (``checkpointer`` for its own, ``checkpointer_<kind>`` for the others), so that a
    resumed run keeps counting ``n_saved``, keeps the true best and removes the files
    of the run it continues: ``checkpoints.resume(path, loader)`` restores it all.

    Args:
        trainer: the trainer; file names carry its iteration.
        val_evaluator: the validation evaluator; "best" is decided when it completes.
        to_save: everything needed to continue training (not modified).
        best_objects: what the best checkpoint holds (not modified), e.g. ``{"model": model}``.
        directory: the checkpoints folder.
        enabled: False: only the on-demand ``interrupted`` saver.
        monitor: validation metric name.
        n_saved: files kept of each kind.
        every: also keep a training checkpoint every this many epochs (0: off).
        mode: ``"min"`` (lower is better) or ``"max"``; needed for a metric of your own, whose
            direction ``metric_direction`` does not know (None: the metric's own direction).
        best_filter: an Ignite event filter on the evaluator's ``COMPLETED``: a validation it
            rejects never competes for "best" (a curriculum's ``final_stage_only``); None: all do.

    Returns:
        ``RunCheckpoints``: a dict ``{"best", "last", "epoch" (if every), "interrupted"}`` ->
        ``Checkpoint``, whose ``resume(path, data)`` continues a run from one of its files
        and ``latest()`` finds the newest.

    Example:
        >>> to_save = {"model": model, "optimizer": optimizer, "trainer": trainer}
        >>> checkpoints = attach_checkpoints(trainer, evaluator, to_save, {"model": model}, "run/checkpoints",
        ...                                  monitor="snr", n_saved=2, every=10)
        >>> trainer.run(loader, max_epochs=50)
        >>> checkpoints["best"].last_checkpoint  # the highest validation SNR
        >>> # a new process, the same objects built again, then:
        >>> trainer.run(checkpoints.resume(checkpoints.latest(), loader), max_epochs=50)
    """
    if not isinstance(n_saved, int) or n_saved < 1:
        raise ValueError(f"Argument n_saved should be a positive integer, got {n_saved!r}.")
    if not isinstance(every, int) or every < 0:
        raise ValueError(f"Argument every should be a non-negative integer, got {every!r}.")
    mode = monitor_mode(monitor, mode) if enabled else None
    saver = _SaveThenRemove(str(directory), atomic=True, create_dir=True, require_empty=False)
    step = global_step_from_engine(trainer, Events.ITERATION_COMPLETED)
    kinds = [k for k in TRAINING_KINDS if enabled and (k != "epoch" or every) or k == "interrupted"]

    training = resumable_objects(_with_model_args(to_save), trainer)
    files: dict[str, dict[str, Any]] = {kind: dict(training) for kind in kinds}
    checkpoints: dict[str, Checkpoint] = {
        kind: Checkpoint(
            files[kind],
            saver,
            filename_prefix=kind,
            n_saved=1 if kind == "interrupted" else n_saved,
            global_step_transform=step,
            include_self=True,
        )
        for kind in kinds
    }
    if enabled:
        check_monitor(val_evaluator, monitor)
        sign = "" if mode == "max" else "neg_"
        checkpoints["best"] = Checkpoint(
            _with_model_args(best_objects),
            saver,
            filename_prefix="best",
            score_function=score_function(monitor, mode),
            score_name=f"{sign}val_{monitor}",
            n_saved=n_saved,
            global_step_transform=step,
        )
    for kind in kinds:  # the other savers' bookkeeping, read when the file is saved
        files[kind].update({f"checkpointer_{k}": c for k, c in checkpoints.items() if k != kind})
    if enabled:
        event = Events.COMPLETED(event_filter=best_filter) if best_filter else Events.COMPLETED
        val_evaluator.add_event_handler(event, checkpoints["best"])
        if every:  # before "last", so that the last file knows about this epoch's file
            trainer.add_event_handler(Events.EPOCH_COMPLETED(every=every), checkpoints["epoch"])
        trainer.add_event_handler(Events.EPOCH_COMPLETED, checkpoints["last"])
    trainer.add_event_handler(Events.EPOCH_COMPLETED, _PassedInterrupted(checkpoints, saver))
    return RunCheckpoints(checkpoints, trainer=trainer, objects=training, directory=directory)
