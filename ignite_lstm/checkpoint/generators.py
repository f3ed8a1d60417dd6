"""The data loader's own random generators in a checkpoint: exact resume with ``DataLoader(generator=...)``.

A ``DataLoader`` given ``generator=g`` (and a sampler given its own ``generator=``) draws from it,
not from the global generator that ``RNGState`` saves: the base seed of its workers when an epoch's
iterator is made, the order as the sampler goes. ``LoaderGenerators`` saves their state as it
stood just before the trainer's current epoch made its iterator. A run resumed in the middle of
that epoch starts from there (the loader draws the same order again and ``SkipBatches`` skips the
batches trained on); one resumed at an epoch's end replays that epoch's draws from there without
loading any data (``replay_loader_epoch``), so that the next epoch draws what it would have drawn.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events

from ignite_lstm._internal.compat import replay_loader_epoch
from ignite_lstm.checkpoint.files import CheckpointMismatch

__all__ = ["LoaderGenerators"]


def _loader(data: Any) -> Any:
    return getattr(data, "loader", data) if type(data).__name__ == "SkipBatches" else data


def _generators(data: Any) -> list[torch.Generator]:
    """The ``torch.Generator`` objects a loader draws from: its own, its sampler's, its batch sampler's."""
    loader = _loader(data)
    found: list[torch.Generator] = []
    for owner in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        for candidate in (owner, getattr(owner, "sampler", None)):
            g = getattr(candidate, "generator", None)
            if isinstance(g, torch.Generator) and all(g is not f for f in found):
                found.append(g)
    return found


class LoaderGenerators:
    """The random generators of the trainer's data loader as a checkpointable object (see the module).

    ``resume_from_checkpoint`` tells it the run's data (``bind``) before loading it. A loader without
    a generator of its own draws from the global one (``RNGState``): nothing to do here.

    Args:
        trainer: the trainer; its data is ``trainer.state.dataloader``, whose generators are taken
            before each epoch's iterator is made (``EPOCH_STARTED``, ``DATALOADER_STOP_ITERATION``).
    """

    def __init__(self, trainer: Engine) -> None:
        self.trainer = trainer
        self.data: Any = None
        self._epoch_start: list[torch.Tensor] | None = None
        trainer.add_event_handler(Events.EPOCH_STARTED, self._snapshot)
        trainer.add_event_handler(Events.DATALOADER_STOP_ITERATION, self._snapshot)  # the old iterator's last draws

    def bind(self, data: Any) -> None:
        """The data the run goes through (what ``trainer.run`` is given)."""
        self.data = data

    def _current(self) -> list[torch.Generator]:
        data = getattr(self.trainer.state, "dataloader", None)
        return _generators(data if data is not None else self.data)

    def _snapshot(self, _: Engine) -> None:
        self._epoch_start = [g.get_state() for g in self._current()]

    def state_dict(self) -> dict[str, Any]:
        now = [g.get_state() for g in self._current()]
        return {"epoch_start": self._epoch_start if self._epoch_start is not None else now}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        generators = _generators(self.data)
        saved = state["epoch_start"]
        if len(saved) != len(generators):
            raise CheckpointMismatch(
                f"The checkpoint holds {len(saved)} generator state(s) of the data loader, this run's loader has "
                f"{len(generators)} (DataLoader(generator=...) and the sampler's generator=); build the loader as "
                f"the run that wrote it did."
            )
        for g, s in zip(generators, saved):
            g.set_state(s)
        trainer = self.trainer.state
        if generators and trainer.epoch_length and trainer.iteration % trainer.epoch_length == 0:
            replay_loader_epoch(_loader(self.data))  # a finished epoch: its draws, as the next epoch sees them
