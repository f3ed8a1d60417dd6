"""State carried across batches ("stateful RNN" mode): lane i of batch k+1 continues lane i of batch k.

``create_trainer(..., carry_state=True)`` and ``create_evaluator(..., carry_state=True)``
return a ``CarryingEngine``: its process function starts each batch from the state
the previous batch ended with (``engine.state.carried_state``: this process's lanes,
None when every lane starts fresh), except

- for the lanes whose batch ``reset`` (B,) bool is True (``ignite_lstm.engine.batches``);
- for every lane at the start of each epoch (of each ``evaluator.run``), but not when
  a run resumes in the middle of an epoch;
- on demand: ``reset_state(engine, lanes=None)``, from a handler or between runs.

A fresh lane is the model's own start (``state=None``: zeros, the model contract):
when every lane is fresh the model gets ``state=None``, otherwise the fresh lanes of
the carried state are set to zero. ``set_state(engine, state)`` makes the next batch
start from a given state, whatever that batch's ``reset`` flags say (the evaluator, e.g.,
from ``trainer.state.carried_state``: validation continues where the training stream
ended, although the validation stream's first chunk marks the start of its series).

The lanes of a state: the model declares the batch dimension of its state,
``state_batch_dim``, the same for every tensor of it (``StatefulLSTM``: 1, its
(h, c) are (layers, B, H) as in ``nn.LSTM``/``nn.GRU``; 0 for a cell's (B, H)). A
batch with another number of lanes than the carried state is refused unless all of
its lanes are reset.

Checkpoints: the trainer's ``state_dict`` holds the carried state under the user key
``carried_state`` as ``{"state": ..., "lanes": (world,) int64, "stale": (world,) bool}``:
every process's lanes concatenated in rank order along the batch dimension (what one
process with the whole global batch would carry), tensors only. Under several
processes ``state_dict`` is therefore collective: every rank calls it, as Ignite's
``Checkpoint`` does before rank 0 writes the file; ``load_state_dict`` gives each rank
its own lanes. A process whose batch was shorter than another's was padded to the
longest, so its lanes were stepped through uncounted padding: they are "stale", and
the next batch must reset all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import ignite.distributed as idist
import torch
import torch.nn as nn
from ignite.engine import Engine, Events

from ignite_lstm.engine.attributes import run_state
from ignite_lstm.engine.execution import unwrap
from ignite_lstm.engine.state import detach_state, map_state, state_tensors

__all__ = ["CarryingEngine", "reset_state", "set_state", "state_batch_dim", "check_carry_state", "STATE_KEY"]

STATE_KEY = "carried_state"  # the trainer's state_dict user key, and the engine.state attribute


def check_carry_state(carry_state: Any) -> None:
    """Refuse a ``carry_state`` argument that is not a bool."""
    if not isinstance(carry_state, bool):
        raise TypeError(f"Argument carry_state should be a bool, got {type(carry_state).__name__}.")


def state_batch_dim(model: nn.Module) -> int:
    """The batch dimension the model declares for the tensors of its state (``state_batch_dim``)."""
    net = unwrap(model)
    dim = getattr(net, "state_batch_dim", None)
    if not isinstance(dim, int) or isinstance(dim, bool):
        got = "none" if dim is None else repr(dim)
        raise TypeError(
            f"Argument model should have an integer attribute state_batch_dim with carry_state=True: the "
            f"batch dimension of every tensor of its state (1 for (layers, B, H) states as in nn.LSTM, "
            f"nn.GRU and StatefulLSTM; 0 for (B, H)); {type(net).__name__} has {got}."
        )
    return dim


class _Carry:
    """What a ``CarryingEngine`` keeps between batches besides ``engine.state.carried_state``."""

    def __init__(self, engine: Engine, batch_dim: int, model_name: str) -> None:
        self.engine, self.dim, self.model_name = engine, batch_dim, model_name
        self.pinned = False  # set_state: the next batch starts from the given state, even at an epoch start
        self.stale = False  # the lanes were stepped through padding up to another process's batch length
        run_state(engine).carried_state = None
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)

    def _epoch_started(self, engine: Engine) -> None:
        length = engine.state.epoch_length
        if self.pinned or (length and engine.state.iteration % length):  # a given state; a resumed mid-epoch run
            return
        self.reset()

    def reset(self, lanes: torch.Tensor | None = None) -> None:
        """Every lane (None) or those where ``lanes`` (B,) bool is True start fresh."""
        if lanes is None:
            run_state(self.engine).carried_state, self.stale = None, False
        elif run_state(self.engine).carried_state is not None:
            run_state(self.engine).carried_state = _zero_lanes(run_state(self.engine).carried_state, ~lanes, self.dim)

    def lanes(self, state: Any) -> int:
        sizes: set[int | None] = set()
        for t in state_tensors(state):
            if not -t.dim() <= self.dim < t.dim():
                sizes.add(None)
            else:
                sizes.add(t.shape[self.dim])
        if None in sizes or len(sizes) > 1:
            shapes = [tuple(t.shape) for t in state_tensors(state)]
            raise ValueError(
                f"The state of {self.model_name} should hold the lanes (the batch) in dimension "
                f"{self.dim} (its state_batch_dim) of every tensor, with one size; got shapes {shapes}."
            )
        return cast(int, sizes.pop()) if sizes else 0  # None was refused above

    def begin(self, x: torch.Tensor, reset: torch.Tensor | None) -> Any:
        """The state a batch x (B, T, F) with these reset flags starts from (None: every lane fresh).

        After ``set_state`` the given state is the start of this batch whatever its flags say
        (a stream's first chunk has ``reset`` True in every lane that starts a series there);
        the flags of the later batches reset as usual.
        """
        given = self.pinned
        if given:
            self.pinned, reset = False, None
        if reset is not None and bool(reset.all()):  # every lane starts fresh: the model's own start
            self.reset()
        state = run_state(self.engine).carried_state
        if state is None:
            return None
        lanes, batch = self.lanes(state), x.shape[0]
        if lanes != batch and given:
            raise ValueError(
                f"Argument batch has {batch} lanes but the state given by set_state has {lanes}: the "
                f"given state is the start of the next batch, lane by lane; give a state of {batch} lanes."
            )
        if lanes != batch:
            raise ValueError(
                f"Argument batch has {batch} lanes but the carried state has {lanes}: with "
                f"carry_state=True lane i of a batch continues lane i of the previous one. Keep the "
                f"number of lanes, or reset all of them (a 'reset' True everywhere, or "
                f"reset_state(engine) before the batch)."
            )
        if self.stale:
            raise ValueError(
                "Argument batch continues lanes that were stepped through padding: the previous batch "
                "of this process was shorter than another process's, so it was padded to that length. "
                "With carry_state=True give every process batches of the same length, or reset all "
                "lanes after a shorter batch."
            )
        state = map_state(lambda t: t.to(x.device), state)
        if reset is not None and bool(reset.any()):
            state = _zero_lanes(state, ~reset, self.dim)
        return state

    def end(self, state: Any, padded: bool = False) -> None:
        run_state(self.engine).carried_state = detach_state(state)
        self.stale = padded

    # ------------------------------------------------------------ checkpoints

    def saved(self) -> dict[str, Any]:
        """The carried state of every process's lanes, concatenated in rank order (collective)."""
        state = run_state(self.engine).carried_state
        lanes = 0 if state is None else self.lanes(state)
        if idist.get_world_size() == 1:
            return {"state": state, "lanes": torch.tensor([lanes]), "stale": torch.tensor([self.stale])}
        mine = {"state": map_state(torch.Tensor.cpu, state), "lanes": lanes, "stale": self.stale}
        every = cast(list[dict[str, Any]], idist.all_gather(mine))  # a list in rank order, the same on every rank
        states = [r["state"] for r in every]
        if any(s is None for s in states) and not all(s is None for s in states):
            fresh = [r for r, s in enumerate(states) if s is None]
            raise ValueError(
                f"The carried state is reset (None) on the processes {fresh} only, so it cannot be "
                f"saved as one global set of lanes; reset every process's lanes together."
            )
        joined = None if states[0] is None else map_state(lambda *ts: torch.cat(ts, self.dim), *states)
        return {
            "state": joined,
            "lanes": torch.tensor([r["lanes"] for r in every]),
            "stale": torch.tensor([r["stale"] for r in every]),
        }

    def restore(self, saved: Mapping[str, Any] | None) -> None:
        """Take this process's lanes of a ``saved()`` value (None: a checkpoint without a carried state)."""
        self.pinned = False
        if saved is None or saved["state"] is None:
            self.reset()
            return
        lanes, stale = saved["lanes"].tolist(), saved["stale"].tolist()
        world, rank = idist.get_world_size(), idist.get_rank()
        if len(lanes) != world:
            length = self.engine.state.epoch_length
            if length and self.engine.state.iteration % length == 0:  # the next epoch start resets every lane
                self.reset()
                return
            raise ValueError(
                f"Argument state_dict holds the carried state of {len(lanes)} processes (lanes "
                f"{lanes}) in the middle of an epoch; this run has {world}: resume it on "
                f"{len(lanes)} processes, or from a checkpoint taken at the end of an epoch."
            )
        start = sum(lanes[:rank])
        run_state(self.engine).carried_state = map_state(
            lambda t: t.narrow(self.dim, start, lanes[rank]).clone(), saved["state"]
        )
        self.stale = bool(stale[rank])


def _zero_lanes(state: Any, keep: torch.Tensor, dim: int) -> Any:
    """``state`` with the lanes where ``keep`` (B,) is False set to zero (a fresh start)."""

    def zero(t: torch.Tensor) -> torch.Tensor:
        shape = [1] * t.dim()
        shape[dim] = -1
        return torch.where(keep.to(t.device).view(shape), t, t.new_zeros(()))

    return map_state(zero, state)


class CarryingEngine(Engine):
    """An Ignite ``Engine`` whose process function carries the recurrent state across batches.

    Made by ``create_trainer``/``create_evaluator`` with ``carry_state=True``; see the module
    docstring. ``engine.state.carried_state`` is this process's lanes' state after the last
    batch (None: every lane starts fresh). With ``checkpointed`` it is a user key of
    ``state_dict`` (every process's lanes, collective under several processes).

    Args:
        process_function: Ignite's ``(engine, batch) -> output``; it calls ``engine.begin_batch``
            and ``engine.end_batch`` around its work.
        model: the model (its ``state_batch_dim`` is read).
        checkpointed: put the carried state into ``state_dict``.
    """

    def __init__(self, process_function: Callable, model: nn.Module, checkpointed: bool) -> None:
        dim = state_batch_dim(model)
        super().__init__(process_function)
        self._carry = _Carry(self, dim, type(unwrap(model)).__name__)
        if checkpointed:
            self.state_dict_user_keys.append(STATE_KEY)

    def begin_batch(self, x: torch.Tensor, reset: torch.Tensor | None) -> Any:
        """The state the batch x (B, T, F) starts from, its ``reset`` (B,) bool applied."""
        return self._carry.begin(x, reset)

    def end_batch(self, state: Any, padded: bool = False) -> None:
        """Keep the state the batch ended with (``padded``: stepped through padding to another process's length)."""
        self._carry.end(state, padded)

    def state_dict(self):
        out = super().state_dict()
        if STATE_KEY in out:
            out[STATE_KEY] = self._carry.saved()
        return out

    def load_state_dict(self, state_dict: Mapping) -> None:
        if STATE_KEY in self.state_dict_user_keys and STATE_KEY not in state_dict:
            state_dict = {**state_dict, STATE_KEY: None}  # a checkpoint of a trainer that did not carry
        super().load_state_dict(state_dict)
        if STATE_KEY in self.state_dict_user_keys:
            self._carry.restore(state_dict[STATE_KEY])


def _carry_of(engine: Any) -> _Carry:
    if not isinstance(engine, CarryingEngine):
        raise TypeError(f"Argument engine should be an engine made with carry_state=True, got {type(engine).__name__}.")
    return engine._carry


def reset_state(engine: Engine, lanes: torch.Tensor | Sequence[int] | None = None) -> None:
    """Start lanes of a carrying engine from a fresh state at its next batch (a handler may call it).

    Args:
        engine: a trainer or evaluator made with ``carry_state=True``.
        lanes: None (every lane: the model's own ``state=None`` start), a (B,) bool tensor
            (True: reset) or a sequence of lane indices.

    Returns:
        None.

    Example:
        >>> @trainer.on(Events.ITERATION_COMPLETED(every=100))
        ... def restart(engine):
        ...     reset_state(engine, [0, 3])  # lanes 0 and 3 start a new series at the next batch
    """
    carry = _carry_of(engine)
    state = run_state(engine).carried_state
    if lanes is None:
        carry.reset()
        return
    if state is None:  # every lane is fresh already
        return
    n = carry.lanes(state)
    if isinstance(lanes, torch.Tensor) and lanes.dtype == torch.bool:
        if tuple(lanes.shape) != (n,):
            raise ValueError(
                f"Argument lanes should be a ({n},) bool tensor (the carried lanes), got shape {tuple(lanes.shape)}."
            )
        flags = lanes.cpu()
    else:
        if any(isinstance(i, bool) for i in lanes):  # a list of flags would silently read as indices 0 and 1
            raise TypeError(
                "Argument lanes should be a (B,) bool tensor or a sequence of lane indices, got a "
                "sequence of bools; use torch.tensor(flags)."
            )
        index = [int(i) for i in lanes]
        if any(not -n <= i < n for i in index):
            raise ValueError(f"Argument lanes should hold lane indices in [0, {n}), got {index}.")
        flags = torch.zeros(n, dtype=torch.bool)
        flags[index] = True
    carry.reset(flags)


def set_state(engine: Engine, state: Any) -> None:
    """Make the next batch of a carrying engine start from ``state``, even at the start of a run or epoch.

    The given state wins over the next batch's ``reset`` flags (a ``StreamLoader``'s first
    chunk has them True: the series start there, but they continue the given state);
    a ``reset`` in a later batch resets its lanes as usual.

    Args:
        engine: a trainer or evaluator made with ``carry_state=True``.
        state: a state of the model's form (detached here), e.g. ``trainer.state.carried_state``;
            None: every lane fresh. Its lanes must match the next batch's.

    Returns:
        None.

    Example:
        >>> set_state(evaluator, trainer.state.carried_state)  # validation continues the training stream
        >>> evaluator.run(val_stream)
    """
    carry = _carry_of(engine)
    if state is not None:
        carry.lanes(state)  # one number of lanes, in the declared dimension
    run_state(engine).carried_state = detach_state(state)
    carry.pinned, carry.stale = True, False
