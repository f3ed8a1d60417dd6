"""Warm-up steps: the first K steps of every series warm the model's state up and count in no metric.

A stateful model starts each series from zeros; its first outputs say more about that start
than about the model. ``SkipFirstSteps(k).attach(evaluator)`` clears the mask of the first
``k`` steps of every series in each batch the evaluator takes (the model still steps through
them, so the later steps are evaluated from the state they leave), on both kinds of
evaluator: whole sequences (step t of a batch is step t of its series) and streams
(``carry_state=True``: a lane's steps are counted from its last ``reset``, and from the start of
each run). The metrics that honour the mask (``build_metrics``, ``channel_metrics``,
``flatten_counted``) then see only the later steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events

from ignite_lstm.engine.batches import parse_batch
from ignite_lstm.engine.carry import CarryingEngine

__all__ = ["SkipFirstSteps"]


class SkipFirstSteps:
    """Count none of the first ``steps`` steps of every series in an evaluator's metrics (their state is kept).

    Args:
        steps: K >= 0 (0: nothing changes).

    Example:
        >>> SkipFirstSteps(200).attach(evaluator)  # metrics from step 200 of every sequence on
    """

    def __init__(self, steps: int) -> None:
        if not isinstance(steps, int) or isinstance(steps, bool):
            raise TypeError(f"Argument steps should be an integer, got {type(steps).__name__}.")
        if steps < 0:
            raise ValueError(f"Argument steps should be >= 0, got {steps}.")
        self.steps = steps
        self._position: torch.Tensor | None = None  # (B,) steps of each lane's series before this batch
        self._carrying = False

    def attach(self, evaluator: Engine) -> None:
        """Mask the warm-up steps of every batch ``evaluator`` takes."""
        self._carrying = isinstance(evaluator, CarryingEngine)
        evaluator.add_event_handler(Events.STARTED, self._started)
        evaluator.add_event_handler(Events.GET_BATCH_COMPLETED, self._mask)

    def _started(self, _: Engine) -> None:
        self._position = None

    def _mask(self, engine: Engine) -> None:
        if not self.steps:
            return
        batch = engine.state.batch
        x, y, mask, reset = parse_batch(batch)
        lanes, length = x.shape[0], x.shape[1]
        start = torch.zeros(lanes, dtype=torch.long)
        if self._carrying:
            if self._position is None or self._position.shape[0] != lanes:
                self._position = torch.zeros(lanes, dtype=torch.long)
            if reset is not None:
                self._position[reset.cpu()] = 0
            start = self._position.clone()
            self._position += length
        counted = (start[:, None] + torch.arange(length)[None, :]) >= self.steps  # (B, T)
        counted = counted.to(x.device)
        mask = counted if mask is None else mask & counted
        state: Any = engine.state
        if isinstance(batch, Mapping):
            state.batch = {**batch, "mask": mask}
        else:
            state.batch = (x, y, mask) if reset is None else (x, y, mask, reset)
