"""The forecasting workflow's handlers: evaluate from the state earlier data leaves, and collect predictions.

A forecaster of one long record is validated and tested on the record's later part, which
continues the earlier part: its evaluation must start from the state the model reaches over
the earlier data, not from zeros. ``WarmStart`` runs the model over that data (a stream:
``StreamLoader``) before every run of a stream evaluator (``create_evaluator(...,
carry_state=True)``) and starts the run from the state it ends in (``set_state``). The
evaluator stays an ordinary Ignite engine: its metrics, and so early stopping and the best
checkpoint that read them, see the later part only.

``PredictionCollector`` keeps an evaluator's predictions and targets in time order,
without the padding, one tensor per series: per row of each batch for an evaluator of
whole sequences; for a stream evaluator, per lane, a series starting at each ``reset`` and
at the run's start, mapped to the ``StreamLoader``'s series (and the segments of a
``consecutive=True`` loader joined back into the series they were cut from) when given the
loader.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
from ignite.engine import Engine, Events

from ignite_lstm.engine.batches import check_prepared, parse_batch, prepare_batch
from ignite_lstm.engine.carry import CarryingEngine, set_state, state_batch_dim
from ignite_lstm.engine.factories import create_evaluator
from ignite_lstm.engine.state import map_state, state_tensors

__all__ = ["WarmStart", "PredictionCollector"]


def _carrying(name: str, engine: Any) -> None:
    if not isinstance(engine, CarryingEngine):
        raise TypeError(f"Argument {name} should be an engine made with carry_state=True, got {type(engine).__name__}.")


class WarmStart:
    """Before each run of a stream evaluator, run the model over earlier data and start from its final state.

    Args:
        model: the evaluator's model (with ``state_batch_dim``).
        warm_up: the earlier data as a stream (e.g. ``StreamLoader([(x[:n], y[:n])], lanes=1,
            chunk_steps=C)``: the history before the evaluated part), run from a fresh state.
        lanes: the lanes of the warm-up's final state that the evaluated stream continues, in
            its lane order (e.g. ``[-1]``: the last lane); None: all of them.
        device, execution, amp_dtype, prepare_batch: of the warm-up's evaluator (``create_evaluator``).

    The warm-up's trailing padding is not stepped through (the state is the one at the last
    counted step); a selected lane whose series ends earlier than that is refused.
    ``warm.state`` is the state given to the last run. Attach it (``warm.attach(evaluator)``)
    to the evaluator whose metrics are read: per-epoch validation (early stopping and the
    best checkpoint read it as usual) or the test.

    Example:
        >>> val = create_evaluator(model, {"mse": MeanSquaredError(...)}, carry_state=True)
        >>> WarmStart(model, StreamLoader([(x[:n_train], y[:n_train])], 1, 52)).attach(val)
        >>> trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda: val.run(val_stream))
    """

    def __init__(
        self,
        model: nn.Module,
        warm_up: Any,
        *,
        lanes: Sequence[int] | None = None,
        device: str | torch.device | None = None,
        execution: str = "auto",
        amp_dtype: torch.dtype | None = None,
        prepare_batch: Callable = prepare_batch,
    ) -> None:
        if lanes is not None and (isinstance(lanes, (str, bytes)) or not isinstance(lanes, Sequence)):
            raise TypeError(f"Argument lanes should be a sequence of lane indices or None, got {type(lanes).__name__}.")
        self.lanes = None if lanes is None else [int(i) for i in lanes]
        self.warm_up = warm_up
        self.dim = state_batch_dim(model)
        self._prepare = prepare_batch
        self._ended: torch.Tensor | None = None  # (B,): the lanes whose series reach the last batch's last step
        self.engine = create_evaluator(
            model,
            device=device,
            execution=execution,
            amp_dtype=amp_dtype,
            prepare_batch=self._trimmed,
            carry_state=True,
        )
        self.state: Any = None

    def _trimmed(self, batch: Any, device: Any, non_blocking: bool) -> tuple:
        """The batch without its trailing padding (the state must be the one at the last counted step)."""
        x, y, mask, reset = check_prepared(self._prepare(batch, device, non_blocking))
        if mask is None:
            self._ended = torch.ones(x.shape[0], dtype=torch.bool)
            return x, y, mask, reset
        counted = mask.any(dim=0).nonzero()
        if counted.numel() == 0:  # nothing counts: every lane only steps through padding
            self._ended = torch.zeros(x.shape[0], dtype=torch.bool)
            return x, y, mask, reset
        last = int(counted[-1]) + 1
        self._ended = mask[:, last - 1].cpu()  # the lanes whose series reach the batch's last counted step
        return x[:, :last], y[:, :last], mask[:, :last], reset

    def attach(self, evaluator: Engine) -> None:
        """Warm up at the start of every run of ``evaluator`` (a stream evaluator)."""
        _carrying("evaluator", evaluator)
        evaluator.add_event_handler(Events.STARTED, self)

    def __call__(self, evaluator: Engine) -> None:
        self.engine.run(self.warm_up)
        engine_state: Any = self.engine.state
        state = engine_state.carried_state
        if state is None:
            raise ValueError("Argument warm_up gave no batch: the warm-up stream is empty.")
        n = state_tensors(state)[0].shape[self.dim]
        lanes = list(range(n)) if self.lanes is None else self.lanes
        bad = [i for i in lanes if not -n <= i < n]
        if bad:
            raise ValueError(f"Argument lanes should hold lane indices in [0, {n}) (the warm-up's), got {bad}.")
        lanes = [i % n for i in lanes]
        ended = self._ended if self._ended is not None else torch.zeros(n, dtype=torch.bool)
        short = [i for i in lanes if not bool(ended[i])]
        if short:
            raise ValueError(
                f"Argument warm_up: the series of lanes {short} end before the stream's last step, so their "
                f"state went on through padding; the evaluated data continues the lanes whose series end "
                f"at the warm-up's last step: select those (lanes=[...]) or lay the history out in one lane."
            )
        if self.lanes is not None:
            index = torch.tensor(lanes)
            state = map_state(lambda t: t.index_select(self.dim, index.to(t.device)), state)
        self.state = state
        set_state(evaluator, state)


def _default_transform(output: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    return output["y_pred"], output["y"], output.get("mask")


class PredictionCollector:
    """Keep an evaluator's predictions and targets in time order, unpadded, one tensor per series.

    Args:
        loader: the ``StreamLoader`` the stream evaluator runs, to give the series in its order
            (the given series, segments of ``consecutive=True`` joined); None: a stream
            evaluator's series lane by lane, in time order within each lane.
        output_transform: the evaluator's output -> ``(y_pred (B*T, O), y (B*T, O), mask (B*T,) or None)``.

    After a run, ``predictions`` and ``targets`` are lists of (T_i, O) tensors on the CPU,
    ``predictions[i]`` the model's outputs at the counted steps of series i. Every run starts a
    new collection. One process: a process collects its own lanes.

    Example:
        >>> collector = PredictionCollector(test_stream)
        >>> collector.attach(evaluator)
        >>> evaluator.run(test_stream)
        >>> forecast = collector.predictions[0]  # (T, O): the whole test series, in order
    """

    def __init__(self, loader: Any = None, output_transform: Callable = _default_transform) -> None:
        if loader is not None and not hasattr(loader, "layout"):
            raise TypeError(f"Argument loader should be a StreamLoader or None, got {type(loader).__name__}.")
        self.loader, self.output_transform = loader, output_transform
        self._pieces: list[list[list[tuple[torch.Tensor, torch.Tensor]]]] = []
        self._rows: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._carrying, self._epoch, self._first = False, 0, True

    def attach(self, evaluator: Engine) -> None:
        """Collect every run of ``evaluator``."""
        self._carrying = isinstance(evaluator, CarryingEngine)
        evaluator.add_event_handler(Events.STARTED, self._started)
        evaluator.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)

    def _started(self, _: Engine) -> None:
        self._pieces, self._rows, self._first = [], [], True
        self._epoch = self.loader.epoch if self.loader is not None else 0  # the epoch of the next chunk

    def _iteration(self, engine: Engine) -> None:
        y_pred, y, mask = self.output_transform(engine.state.output)
        x, _, batch_mask, reset = parse_batch(engine.state.batch)
        lanes, steps = x.shape[0], x.shape[1]
        y_pred, y = y_pred.detach().cpu(), y.detach().cpu()
        if mask is None and batch_mask is not None and y_pred.shape[0] != lanes * steps:
            # the evaluator's output holds the counted rows only, lane by lane: put them back in place
            mask = batch_mask.detach().cpu().bool().reshape(-1)
            y_pred = y_pred.new_zeros(lanes * steps, *y_pred.shape[1:]).index_put_((mask,), y_pred)
            y = y.new_zeros(lanes * steps, *y.shape[1:]).index_put_((mask,), y)
        y_pred, y = y_pred.view(lanes, steps, -1), y.view(lanes, steps, -1)
        mask = torch.ones(lanes, steps, dtype=torch.bool) if mask is None else mask.cpu().view(lanes, steps)
        if not self._carrying:
            self._rows.extend((y_pred[i][mask[i]], y[i][mask[i]]) for i in range(lanes))
            return
        if self._first:
            self._pieces = [[] for _ in range(lanes)]
        for i in range(lanes):
            if self._first or (reset is not None and bool(reset[i])):
                self._pieces[i].append([])
            if bool(mask[i].any()):
                self._pieces[i][-1].append((y_pred[i][mask[i]], y[i][mask[i]]))
        self._first = False

    def _series(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if not self._carrying:
            return self._rows
        lanes = [
            [(torch.cat([p for p, _ in piece]), torch.cat([t for _, t in piece])) for piece in pieces if piece]
            for pieces in self._pieces
        ]
        if self.loader is None:
            return [s for lane in lanes for s in lane]
        layout = self.loader.layout(self._epoch)
        first = self.loader.rank * self.loader.local_lanes
        found: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for i, pieces in enumerate(lanes):
            members = layout[first + i]
            if len(pieces) != len(members):
                raise ValueError(
                    f"Lane {first + i} gave {len(pieces)} series, but the loader's layout has "
                    f"{len(members)} there: collect a full pass of the loader given to PredictionCollector."
                )
            found.update(zip(members, pieces))
        joined: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for k in sorted(found):  # segments in order, each joined to the series it was cut from
            joined.setdefault(self.loader.sources[k], []).append(found[k])
        return [(torch.cat([p for p, _ in joined[s]]), torch.cat([t for _, t in joined[s]])) for s in sorted(joined)]

    @property
    def predictions(self) -> list[torch.Tensor]:
        """The predictions of the last run, one (T_i, O) tensor per series."""
        return [p for p, _ in self._series()]

    @property
    def targets(self) -> list[torch.Tensor]:
        """The targets of the last run, one (T_i, O) tensor per series, aligned with ``predictions``."""
        return [t for _, t in self._series()]
