"""The trainer's work on one batch: windows or detached chunks, with masks, mixed precision and accumulation.

``BatchUpdate`` is what ``create_trainer``'s process function calls. It owns the
recurrent state of the batch (from the state it is given at its start: None, the
model's own start, unless the trainer carries the state across batches; carried
across windows, detached at every window boundary, returned at the end) and the
optimizer steps.

The loss of a batch is the mean over its counted positions (every position without
a mask) on all processes together: each segment (a window, or a chunk of one-step
windows) backpropagates ``loss_fn`` over its counted positions times
``count * world_size / (batch count * accumulation steps)``, so that the gradient, once
DDP has averaged it over the processes, is that of the mean over all counted
positions. With ``update="window"`` the denominator is the window's count instead.
A segment without a counted position on any process is computed without a graph
and takes no optimizer step.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import ignite.distributed as idist
import torch
import torch.nn as nn
from ignite.engine import Engine

from ignite_lstm.engine.attributes import run_state
from ignite_lstm.engine.batches import (
    SegmentCounts,
    global_max,
    global_steps,
    pad_to_length,
    segment_counts,
    window_bounds,
)
from ignite_lstm.engine.events import TimeEvents
from ignite_lstm.engine.execution import amp_context, run_steps, step_fn, unwrap, without_grad_sync
from ignite_lstm.engine.losses import StepLosses, loss_positions, masked_loss
from ignite_lstm.engine.state import detach_state

__all__ = ["BatchUpdate", "BatchResult", "DEFAULT_CHUNK_STEPS", "chunk_length"]

DEFAULT_CHUNK_STEPS = 250
"""Steps per chunk of ``fused-detached`` for a model that does not size its own chunks (``chunk_length``)."""


def chunk_length(model: nn.Module, steps: int, batch_size: int, element_size: int) -> int:
    """Steps per chunk of the ``fused-detached`` path when the user gave no ``chunk_steps``.

    A model with ``detached_chunk_steps(batch_size, element_size)`` (``StatefulLSTM``, ``StatefulGRU``:
    as many steps as keep what a chunk's forward saves for its backward within a byte budget) sizes its
    own chunks; any other model gets ``DEFAULT_CHUNK_STEPS``. The batch's steps are then cut into as
    few chunks as that allows, of equal length (the last one shorter by less than one step per chunk),
    rather than full chunks and a short rest that would cost a chunk's overhead for a few steps.

    Args:
        model: the trained model (a DDP wrapper is looked through).
        steps: T, the batch's steps (the longest over the processes).
        batch_size: B, the largest over the processes (they must cut their batches alike).
        element_size: bytes per value of the inputs (4: float32).

    Returns:
        The chunk length, >= 1.

    Example:
        >>> chunk_length(StatefulLSTM(5, 64, num_layers=2), 2000, 40, 4)  # 5 chunks, the most 465 steps each
        400
    """
    size = getattr(unwrap(model), "detached_chunk_steps", None)
    most = max(1, int(size(batch_size, element_size))) if callable(size) else DEFAULT_CHUNK_STEPS
    chunks = max(1, -(-steps // most))
    return max(1, -(-steps // chunks))


class BatchResult(NamedTuple):
    """What ``BatchUpdate`` returns for one batch."""

    total: torch.Tensor  # the loss summed over this process's counted positions (no graph), in the loss's dtype
    count: float  # type: ignore[assignment]  # counted positions on all processes (weighted: their sum); shadows tuple.count
    norm: torch.Tensor | None  # the gradient norm (None: no optimizer step reported one)
    state: Any  # the state after the batch's last step, detached
    padded: bool  # the batch was padded to another process's length (the state stepped through it)


class BatchUpdate:
    """One batch of the trainer: ``update(engine, x, y, mask, state=None) -> BatchResult``.

    Args:
        model, optimizer, loss_fn: as given to ``create_trainer``.
        events: the ``TimeEvents`` enum to fire.
        path: ``"stepwise"``, ``"fused"`` or ``"fused-detached"``.
        tbptt_steps, update, chunk_steps, grad_clip, amp_dtype, accumulation_steps: as in ``create_trainer``
            (``chunk_steps`` None: ``chunk_length`` per batch).
        scaler: a ``torch.amp.GradScaler`` (float16) or None.
        allow_empty: accept a batch without a counted position (the state carried across batches
            steps through it; no gradient, no optimizer step unless earlier batches accumulated one).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Any,
        events: type[TimeEvents],
        *,
        path: str,
        tbptt_steps: int,
        update: str,
        chunk_steps: int | None,
        grad_clip: float | None,
        amp_dtype: torch.dtype | None,
        accumulation_steps: int,
        scaler: Any,
        allow_empty: bool = False,
    ) -> None:
        self.model, self.optimizer, self.loss_fn, self.events = model, optimizer, loss_fn, events
        self.update, self.grad_clip, self.chunk_steps = update, grad_clip, chunk_steps
        self.amp_dtype, self.accumulation, self.scaler = amp_dtype, accumulation_steps, scaler
        self.step = step_fn(model)
        self.step_losses = StepLosses(loss_fn)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.busy = False
        self.allow_empty = allow_empty  # a carried stream: a chunk may count nothing and only advance the state
        self.set_window(path, tbptt_steps)

    def set_window(self, path: str, tbptt_steps: int) -> None:
        """Another window length K and the path chosen for it, from the next batch on (not inside one)."""
        if self.busy:
            raise RuntimeError(
                "The trainer's window length cannot change inside an iteration; change it from a "
                "handler of Events.EPOCH_STARTED or Events.ITERATION_STARTED."
            )
        self.path, self.tbptt_steps = path, tbptt_steps
        self.length = self.chunk_steps if path == "fused-detached" else tbptt_steps

    def __call__(
        self, engine: Engine, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, state: Any = None
    ) -> BatchResult:
        self.busy = True
        try:
            return self._batch(engine, x, y, mask, state)
        finally:
            self.busy = False

    def _batch(
        self, engine: Engine, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, state: Any
    ) -> BatchResult:
        steps = global_steps(x.shape[1])
        padded = steps > x.shape[1]
        if padded:  # processes with batches of other lengths: pad to the longest, uncounted
            x, y, mask = pad_to_length(x, y, mask, steps)
        mask, weights = loss_positions(self.loss_fn, y, mask)  # ignore_index, class weights
        length = self.length
        if length is None:  # fused-detached, chunks sized for the batch: the same bounds on every process
            length = chunk_length(self.model, steps, global_max(x.shape[0]), x.element_size())
        counts = segment_counts(mask, x.shape[0], window_bounds(steps, length), weights)
        n = sum(counts.total)
        if n == 0 and not self.allow_empty:
            raise ValueError("Argument batch should have at least one step that counts; its mask is False everywhere.")
        iteration = engine.state.iteration
        stepping = iteration % self.accumulation == 0  # Ignite's meaning of gradient_accumulation_steps
        if self.update == "sequence" and (iteration - 1) % self.accumulation == 0:
            self.optimizer.zero_grad(set_to_none=True)
        run = self._detached if self.path == "fused-detached" else self._windows
        total, norm, state = run(engine, x, y, (mask, weights), counts, n, stepping, state)
        if total is None:  # no counted position on this process
            total = x.new_zeros(())
        if self.update == "sequence":
            norm = self._optimizer_step() if stepping else self._grad_norm()
        return BatchResult(total, n, norm, state, padded)

    # ------------------------------------------------------------ the two loops

    def _windows(
        self,
        engine: Engine,
        x: torch.Tensor,
        y: torch.Tensor,
        masks: tuple[torch.Tensor | None, torch.Tensor | None],  # (mask, position weights)
        counts: SegmentCounts,
        n: float,
        stepping: bool,
        state: Any,
    ):
        sequence = self.update == "sequence"
        mask, _ = masks
        total, norm = None, None
        for w, (start, stop) in enumerate(counts.bounds):
            run_state(engine).window += 1
            engine.fire_event(self.events.WINDOW_STARTED)
            if not sequence:
                self.optimizer.zero_grad(set_to_none=True)
            denominator = n * self.accumulation if sequence else counts.total[w]
            sync = (w == counts.last and stepping) if sequence else True  # DDP: the last backward before a step
            m = None if mask is None else mask[:, start:stop]
            _, state, loss = self._segment(x[:, start:stop], y[:, start:stop], m, state, counts, w, denominator, sync)
            state = detach_state(state)  # the window boundary
            if not sequence and counts.total[w]:
                norm = self._optimizer_step(report_norm=w == counts.last)
            if loss is None:
                loss = x.new_full((), float("nan"))  # no counted step in this window (here)
            else:
                total = loss * counts.local[w] if total is None else total + loss * counts.local[w]
            run_state(engine).window_loss = loss
            engine.fire_event(self.events.WINDOW_COMPLETED)
            run_state(engine).window_losses = loss.reshape(1)
            engine.fire_event(self.events.CHUNK_COMPLETED)
        return total, norm, state

    def _detached(
        self,
        engine: Engine,
        x: torch.Tensor,
        y: torch.Tensor,
        masks: tuple[torch.Tensor | None, torch.Tensor | None],  # (mask, position weights)
        counts: SegmentCounts,
        n: float,
        stepping: bool,
        state: Any,
    ):
        # tbptt_steps == 1, update == "sequence": every step is a window, computed a chunk at a time.
        mask, weights = masks
        total = None
        for c, (start, stop) in enumerate(counts.bounds):
            m = None if mask is None else mask[:, start:stop]
            y_pred, state, loss = self._segment(
                x[:, start:stop],
                y[:, start:stop],
                m,
                state,
                counts,
                c,
                n * self.accumulation,
                c == counts.last and stepping,
            )
            if loss is not None:
                total = loss * counts.local[c] if total is None else total + loss * counts.local[c]
            w = None if weights is None else weights[:, start:stop]
            run_state(engine).window_losses = self.step_losses(y_pred.detach(), y[:, start:stop], m, w)  # (C,)
            run_state(engine).window += stop - start
            engine.fire_event(self.events.CHUNK_COMPLETED)
        return total, None, state

    # ------------------------------------------------------------ one segment, backward, optimizer

    def _segment(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        state: Any,
        counts: SegmentCounts,
        i: int,
        denominator: float,
        sync: bool,
    ):
        """Forward (and backward) of segment i; returns (y_pred, state, its loss without graph or None)."""
        here, anywhere = counts.local[i], counts.total[i]
        with without_grad_sync(self.model, sync), torch.set_grad_enabled(anywhere > 0):
            with amp_context(x, self.amp_dtype):  # around the forward and the loss only
                y_pred, state = self._forward(x, state)
                loss = masked_loss(self.loss_fn, y_pred, y, mask, counts.counted[i] if here else 0)
            if anywhere:
                # A process without a counted position here still takes part in DDP's gradient sync.
                term = loss * (here * idist.get_world_size() / denominator) if loss is not None else y_pred.sum() * 0.0
                (self.scaler.scale(term) if self.scaler is not None else term).backward()
        return y_pred, state, None if loss is None else loss.detach()

    def _forward(self, x: torch.Tensor, state: Any):
        if self.path == "stepwise":
            return run_steps(self.step, x, state)
        if self.path == "fused-detached":
            return self.model(x, state, detach_every_step=True)
        return self.model(x, state)

    def _grad_norm(self) -> torch.Tensor:
        """The norm of the gradient accumulated so far (an iteration without an optimizer step)."""
        if all(p.grad is None for p in self.params):
            return torch.zeros(())
        norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        return norm / self.scaler.get_scale() if self.scaler is not None else norm

    def _optimizer_step(self, report_norm: bool = True) -> torch.Tensor | None:
        # Only the batch's last step reports its norm: without clipping, computing it for
        # every window would add a reduction over all gradients to the per-window loop.
        if all(p.grad is None for p in self.params):  # nothing counted since the last step (a carried stream)
            return torch.zeros(())
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clip and report the true gradient
        norm = None
        if self.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        elif report_norm:
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return norm
