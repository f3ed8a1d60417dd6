"""What ``attach_checkpoints`` returns: its savers, and the one call that continues a run from their files.

``RunCheckpoints.resume(path, loader)`` restores everything ``attach_checkpoints`` wrote: the
objects of ``to_save``, each saver's list of files (so that the resumed run keeps the true
best and removes the files the run left alone would have removed), the random generators
and the trainer's place in its data (``resume.resume_from_checkpoint``, which the command
line's runs go through as well).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint

from ignite_lstm.checkpoint.files import find_checkpoint, read_checkpoint, require_entries
from ignite_lstm.checkpoint.resume import (
    LoaderGenerators,
    RNGState,
    SkipBatches,
    essential_keys,
    resume_from_checkpoint,
)

__all__ = ["RunCheckpoints", "EpochStartRNG", "LoaderGenerators", "resumable_objects"]


class EpochStartRNG(RNGState):
    """The random generators as they stood when the trainer's current epoch started.

    A ``DataLoader(shuffle=True)`` draws its order from them when its epoch starts. A run
    resumed in the middle of an epoch sets them back to this state before the trainer
    runs, so that the loader draws the same order again and the batches skipped are the
    ones already trained on; the generators of the checkpoint itself (``rng``) are then
    restored when the first remaining iteration starts.

    Args:
        trainer: the trainer; the state is taken at each of its ``EPOCH_STARTED``.
    """

    def __init__(self, trainer: Engine) -> None:
        self._state: dict[str, Any] | None = None
        trainer.add_event_handler(Events.EPOCH_STARTED, self._snapshot)

    def _snapshot(self, _: Engine) -> None:
        self._state = super().state_dict()

    def state_dict(self) -> dict[str, Any]:
        return self._state if self._state is not None else super().state_dict()


def resumable_objects(objects: Mapping[str, Any], trainer: Engine) -> dict[str, Any]:
    """A copy of ``objects`` with the random generators (``rng``, ``rng_epoch_start``, and ``loader_rng``:
    the data loader's own ``generator=`` and its sampler's) where it holds the trainer and no entries of
    those names (``attach_checkpoints``'s training files)."""
    out = dict(objects)
    if any(obj is trainer for obj in out.values()):
        out.setdefault("rng", RNGState())
        if "rng_epoch_start" not in out:
            out["rng_epoch_start"] = EpochStartRNG(trainer)
        if "loader_rng" not in out:
            out["loader_rng"] = LoaderGenerators(trainer)
    return out


class RunCheckpoints(dict):
    """``attach_checkpoints``'s savers, ``kind -> Checkpoint`` (``"best"``, ``"last"``, ``"epoch"``,
    ``"interrupted"``), with ``resume`` to continue a run from one of their files.

    Args:
        savers: kind -> Ignite ``Checkpoint``.
        trainer: the trainer they save.
        objects: what the training files hold (``to_save``, ``model_args``, the generators).
        directory: the checkpoints folder.
    """

    def __init__(
        self, savers: Mapping[str, Checkpoint], *, trainer: Engine, objects: Mapping[str, Any], directory: str | Path
    ) -> None:
        super().__init__(savers)
        self.trainer = trainer
        self.objects = dict(objects)
        self.directory = Path(directory)

    def latest(self) -> Path | None:
        """The newest training checkpoint in the folder (``last_``, ``epoch_``, ``interrupted_``), or None."""
        return find_checkpoint(self.directory)

    def resume(self, checkpoint: str | Path | Mapping[str, Any], data: Any, *, source: str | Path | None = None) -> Any:
        """Continue the run from a training checkpoint, exactly where it stood.

        Call it after building the run's objects as the first run did (``attach_checkpoints``
        included), before ``trainer.run``. It loads every object of ``to_save`` (refusing a
        model of another shape), gives each saver its list of files back (the best so far,
        the files to remove once ``n_saved`` newer ones exist), and, for a file written in the
        middle of an epoch (``checkpoints["interrupted"]``), makes the data skip the batches of
        that epoch already trained on, with the random generators as they stood.

        Args:
            checkpoint: a training checkpoint file (``last_*``, ``epoch_*``, ``interrupted_*``;
                ``latest()`` finds the newest), or its contents from ``read_checkpoint``.
            data: what the first run passed to ``trainer.run``. A loader of ``to_save`` (one with
                ``state_dict``/``load_state_dict``) restores its own position; any other (a
                ``DataLoader``, shuffling or not) is wrapped in ``SkipBatches``.
            source: the file's name in messages (default: ``checkpoint`` when a path).

        Returns:
            The data to pass to ``trainer.run``: ``data`` itself, or ``data`` wrapped in
            ``SkipBatches``.

        Raises:
            CheckpointMismatch: the file cannot be read, is no training checkpoint (a ``best_*``
                file), lacks the trainer or another entry the run needs, or holds a model of
                another shape. ValueError: ``to_save`` holds no trainer. TypeError: no ``data``.

        Example:
            >>> checkpoints = attach_checkpoints(trainer, evaluator, to_save, {"model": model}, "run/checkpoints")
            >>> trainer.run(checkpoints.resume(checkpoints.latest(), loader), max_epochs=50)
        """
        if data is None:
            raise TypeError("Argument data should be the trainer's data (what trainer.run was given), got None.")
        required = essential_keys(self.objects, self.trainer, argument="to_save of attach_checkpoints")
        if isinstance(checkpoint, (str, Path)):
            source = checkpoint if source is None else source
            checkpoint = read_checkpoint(checkpoint, required=required)
        elif isinstance(checkpoint, Mapping):
            source = "checkpoint" if source is None else source
            require_entries(dict(checkpoint), required, source)
        else:
            raise TypeError(
                f"Argument checkpoint should be a file path or a checkpoint's contents (dict), "
                f"got {type(checkpoint).__name__}."
            )
        if not isinstance(data, SkipBatches) and not any(obj is data for obj in self.objects.values()):
            data = SkipBatches(data)
        resume_from_checkpoint(checkpoint, self.objects, self.trainer, data, source=source)
        checkpointer_states(self, checkpoint)
        return data


def checkpointer_states(checkpoints: Mapping[str, Checkpoint], checkpoint: Mapping[str, Any]) -> None:
    """Give each saver its list of files from a training checkpoint (see ``attach_checkpoints``).

    The file's own ``checkpointer`` goes to the saver of its kind only (its files are named
    ``<kind>_...``): a saver the checkpointed run did not have starts with no files.
    """
    own = checkpoint.get("checkpointer")
    for kind, saver in checkpoints.items():
        state = checkpoint.get(f"checkpointer_{kind}", own)
        if state is not None:
            saver.load_state_dict(state)
            if state is own and not Path(saver.last_checkpoint or "").name.startswith(f"{kind}_"):
                saver.reset()  # another kind's files
