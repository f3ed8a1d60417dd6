"""How a run continues from a training checkpoint, and what makes it continue exactly.

Resuming is exact: a run continued from a checkpoint computes the same numbers as
the run left alone. A checkpoint written at the end of an epoch restores everything
before the trainer starts. One written in the middle of an epoch (Ctrl-C) also
skips the batches of that epoch already trained on (``SkipBatches``) and restores
the random generators and the epoch-loss average only when the first remaining
iteration starts, after the data loader has drawn its own seed, exactly where the
interrupted run stood. The files themselves are ``checkpointing``'s; the one call that
restores everything ``attach_checkpoints`` wrote is ``run_checkpoints.RunCheckpoints.resume``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint

from ignite_lstm._internal.trees import flatten
from ignite_lstm.checkpoint.files import ESSENTIAL_KEYS, CheckpointMismatch, FixedState, require_entries
from ignite_lstm.checkpoint.generators import LoaderGenerators

__all__ = [
    "RunFinished",
    "RNGState",
    "LoaderGenerators",  # from generators.py
    "check_not_stopped",
    "SkipBatches",
    "check_model_args",
    "check_resumable",
    "config_changes",
    "resume_from_checkpoint",
    "essential_keys",
    "SHAPE_KEYS",
    "DEFERRED_KEYS",
]

logger = logging.getLogger(__name__)

SHAPE_KEYS = ("input_size", "hidden_size", "num_layers", "output_size")  # model arguments that set tensor shapes
DEFERRED_KEYS = ("rng", "epoch_loss")  # mid-epoch: restored when the first remaining iteration starts


class RNGState:
    """The torch (CPU and CUDA), numpy and Python random generators as a checkpointable object."""

    def state_dict(self) -> dict[str, Any]:
        # the global generator is the legacy MT19937: get_state() gives the 5-tuple, never the dict
        name, keys, pos, has_gauss, gauss = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
        version, internal, gauss_next = random.getstate()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": {
                "name": name,
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "gauss": float(gauss),
            },
            "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        n = state["numpy"]
        np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
        p = state["python"]
        random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def check_not_stopped(checkpoint: Mapping[str, Any], to_load: Mapping[str, Any], source: str | Path) -> None:
    """Refuse to resume a run that early stopping ended, unless this run's patience lets it go on.

    Resuming it as it was would train one more epoch and stop again. The choice here is to refuse
    with the reason, as the command line does; to train longer, give the ``EarlyStopping`` of
    ``to_load`` a patience above the checkpoint's counter (a fresh patience: leave it out of ``to_load``).

    Raises:
        CheckpointMismatch: the checkpoint's counter of an ``EarlyStopping`` in ``to_load`` reached its patience.
    """
    from ignite.handlers import EarlyStopping

    for name, obj in to_load.items():
        saved = checkpoint.get(name)
        if isinstance(obj, EarlyStopping) and isinstance(saved, Mapping) and saved.get("counter", 0) >= obj.patience:
            trainer = checkpoint.get("trainer", {})
            done = trainer.get("iteration", 0) // max(trainer.get("epoch_length") or 1, 1)
            raise CheckpointMismatch(
                f"{source} is from a run that stopped early at epoch {done} ({saved['counter']} validations "
                f"without improvement, patience {obj.patience}): resumed as it is, it would train one more epoch "
                f"and stop again. To train longer, create its EarlyStopping ({name!r}) with a patience above "
                f"{saved['counter']}, or leave {name!r} out of the objects to load (a fresh patience)."
            )


class SkipBatches:
    """A data loader whose next pass can start after its first ``skip`` batches.

    The rest of a half-trained epoch, after a mid-epoch resume; every later pass is
    whole. ``len()`` stays the full epoch length, as Ignite expects.
    """

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.skip = 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        iterator = iter(self.loader)
        skip, self.skip = self.skip, 0
        for _ in range(skip):
            next(iterator)
        return iterator


class RunFinished(CheckpointMismatch):
    """The checkpoint is the end of its run (the last epoch, or stopped early): there is nothing to continue."""


def check_model_args(saved: Mapping[str, Any], current: Mapping[str, Any], source: str | Path) -> None:
    """Refuse to resume a model whose shape differs from the checkpoint's.

    Args:
        saved: the checkpoint's ``model_args``.
        current: this run's model arguments (``StatefulLSTM.config``).
        source: the checkpoint file, for the message.

    Raises:
        CheckpointMismatch: naming every differing argument.
    """
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r}, this config {current.get(k)!r}"
        for k in SHAPE_KEYS
        if saved.get(k) != current.get(k)
    ]
    if diffs:
        raise CheckpointMismatch(
            f"Cannot resume from {source}: this config changes the model shape ({'; '.join(diffs)}). "
            f"Resume with the settings of the run that wrote it (model.*, data.frequencies), or start a new run."
        )


def check_resumable(
    checkpoint: Mapping[str, Any],
    *,
    model_args: Mapping[str, Any],
    epochs: int,
    patience: int | None = None,
    source: str | Path = "checkpoint",
) -> None:
    """Refuse a resume that cannot continue: other model shape, finished run, run stopped early.

    Args:
        checkpoint: from ``read_checkpoint``.
        model_args: this run's model arguments (``StatefulLSTM.config``).
        epochs: this run's ``train.epochs``.
        patience: this run's early-stopping patience, None when early stopping is off.
        source: the file, for the messages.

    Raises:
        CheckpointMismatch: with what to change.
    """
    check_model_args(checkpoint["model_args"], model_args, source)
    trainer = checkpoint["trainer"]
    done = trainer["iteration"] // trainer["epoch_length"]  # whole epochs trained
    if done >= epochs:  # Ignite would start such a run over from epoch 1
        raise RunFinished(
            f"{source} is the end of a finished run (epoch {done} of train.epochs={epochs}); "
            f"pass train.epochs=N with N > {done} to train longer."
        )
    counter = checkpoint.get("early_stopping", {}).get("counter", 0)
    if patience is not None and counter >= patience:
        raise RunFinished(
            f"{source} is from a run that stopped early at epoch {done} ({counter} "
            f"validations without improvement); raise handlers.early_stopping.patience above "
            f"{counter} to train longer."
        )


def config_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` for every setting that differs (``resume`` itself ignored)."""
    old, new = flatten(saved), flatten(current)
    return [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in sorted(set(old) | set(new))
        if k != "resume" and old.get(k) != new.get(k)
    ]


def _load(name: str, obj: Any, state: Any) -> None:
    try:
        Checkpoint.load_objects({name: obj}, {name: state})
    except CheckpointMismatch:
        raise
    except Exception as exc:
        raise CheckpointMismatch(
            f"The checkpoint's {name!r} state does not fit this run ({type(exc).__name__}: {exc}); "
            f"was it written with other handlers or train settings?"
        ) from exc


def essential_keys(to_load: Mapping[str, Any], trainer: Engine, argument: str = "to_load") -> list[str]:
    """The entries of ``to_load`` a checkpoint must hold to continue: the trainer's and the
    ``ESSENTIAL_KEYS`` it has (a model of your own has no ``model_args``).

    Raises:
        ValueError: no entry of ``to_load`` is the trainer (``argument`` names it in the message).
    """
    if not any(obj is trainer for obj in to_load.values()):
        raise ValueError(
            f"Argument {argument} should hold the trainer, e.g. {{'model': model, 'optimizer': "
            f"optimizer, 'trainer': trainer}}: a run continues from the trainer's position."
        )
    return [k for k, obj in to_load.items() if k in ESSENTIAL_KEYS or obj is trainer]


def _restores_itself(data: Any, to_load: Mapping[str, Any]) -> bool:
    """Whether the trainer's data is an entry of ``to_load``: a loader that restores its own position."""
    inner = data.loader if isinstance(data, SkipBatches) else data
    return any(obj is inner for obj in to_load.values())


def resume_from_checkpoint(
    checkpoint: Mapping[str, Any],
    to_load: Mapping[str, Any],
    trainer: Engine,
    data: Any,
    *,
    source: str | Path = "checkpoint",
) -> None:
    """Load a training checkpoint into this run's objects so that training continues exactly.

    From plain Python, ``attach_checkpoints(...).resume(path, loader)`` calls this and also
    restores the savers' lists of files.

    Args:
        checkpoint: from ``read_checkpoint``.
        to_load: name -> object with ``load_state_dict`` (the ``to_save`` of the run);
            must include the trainer, and ``model_args`` where the model has them.
        trainer: the trainer (its state says whether the file was written mid-epoch).
        data: the trainer's data: a ``SkipBatches``, which skips the trained batches of a
            half-done epoch, or an entry of ``to_load`` (a loader whose ``load_state_dict``
            restores its own position: nothing is skipped).
        source: the file, for messages.

    Raises:
        CheckpointMismatch: a different model shape, an essential entry missing or not
            fitting, or a run that early stopping ended (``check_not_stopped``). Entries of optional handlers (LR scheduler, early stopping,
            checkpoint bookkeeping) that the file lacks start fresh, with a warning.
        ValueError: no entry of ``to_load`` is the trainer. TypeError: a mid-epoch checkpoint and
            ``data`` that can neither skip nor restore its position.
    """
    essential = essential_keys(to_load, trainer)
    require_entries(checkpoint, essential, source)
    check_not_stopped(checkpoint, to_load, source)
    for obj in to_load.values():
        if isinstance(obj, LoaderGenerators):
            obj.bind(data)
    if isinstance(to_load.get("model_args"), FixedState):
        check_model_args(checkpoint["model_args"], to_load["model_args"].value, source)
    for name in essential:
        _load(name, to_load[name], checkpoint[name])
    fresh = [k for k in to_load if k not in checkpoint]
    if fresh:
        logger.warning("The checkpoint has no state for %s; these start fresh.", ", ".join(fresh))
    rest = [k for k in to_load if k in checkpoint and k not in essential]
    for name in rest:
        if name not in DEFERRED_KEYS:
            _load(name, to_load[name], checkpoint[name])

    state = trainer.state
    assert state.epoch_length is not None  # a loaded trainer state always has one
    done_in_epoch = state.iteration % state.epoch_length
    deferred = {k: to_load[k] for k in rest if k in DEFERRED_KEYS}
    if done_in_epoch == 0:
        for name, obj in deferred.items():
            _load(name, obj, checkpoint[name])
    else:
        if not _restores_itself(data, to_load):
            if not isinstance(data, SkipBatches):
                raise TypeError(
                    f"Argument data should be a SkipBatches or an entry of to_load that restores its "
                    f"own position (the checkpoint is mid-epoch), got {type(data).__name__}."
                )
            data.skip = done_in_epoch

        def restore(_: Engine) -> None:
            for name, obj in deferred.items():
                _load(name, obj, checkpoint[name])

        trainer.add_event_handler(Events.ITERATION_STARTED(once=state.iteration + 1), restore)
    logger.info(
        "Resumed from %s at epoch %d, iteration %d%s",
        source,
        state.epoch,
        state.iteration,
        f" ({done_in_epoch} of {state.epoch_length} batches of epoch {state.epoch + 1} done)" if done_in_epoch else "",
    )
