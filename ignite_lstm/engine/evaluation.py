"""The evaluator factory: every sequence from a reset state through all T steps, or a stream.

``create_evaluator`` (re-exported by ``ignite_lstm.engine.factories``) hands its metrics the
counted positions only, in the form Ignite's metrics take; batches, masks and targets are
those of ``create_trainer``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
import torch.nn as nn
from ignite.engine import Engine

from ignite_lstm.engine.batches import check_prepared, prepare_batch
from ignite_lstm.engine.carry import CarryingEngine, check_carry_state
from ignite_lstm.engine.execution import (
    amp_context,
    check_amp_dtype,
    refuse_outer_autocast,
    resolve_execution,
    run_steps,
    step_fn,
    unwrap,
)
from ignite_lstm.engine.targets import check_targets, prepare_targets

__all__ = ["create_evaluator"]


def _to_device(model: nn.Module, device: str | torch.device | None, optimizer: bool) -> None:
    """Move the model to ``device``; with an optimizer, refuse a move that replaced the parameters."""
    if device is None:
        return
    before = list(model.parameters())
    model.to(device)  # in place where torch can (CPU <-> GPU): an optimizer built on the parameters keeps them
    if optimizer and any(a is not b for a, b in zip(before, model.parameters())):
        raise ValueError(
            f"Argument device is {str(device)!r}: moving the model there replaced its parameters, so the "
            f"optimizer built on them would not train it; move the model first (model.to(device)), "
            f"then create the optimizer."
        )


def create_evaluator(
    model: nn.Module,
    metrics: dict | None = None,
    *,
    device: str | torch.device | None = None,
    execution: str = "auto",
    amp_dtype: torch.dtype | None = None,
    non_blocking: bool = False,
    prepare_batch: Callable = prepare_batch,
    engine: str | None = None,
    carry_state: bool = False,
    targets: str = "step",
) -> Engine:
    """Create an Ignite evaluator: every sequence from a reset state through all T steps, or a stream.

    One evaluator serves the train, validation and test splits. The metrics see the
    counted positions only, N rows: the output is ``{"y_pred": (N, O), "y": (N, O) or (N,),
    "x": (N, F)}``, the rows of the steps whose mask is True (all B*T without a mask; with
    ``targets="last"`` one per sequence, at its last counted step), the form Ignite's metrics
    take: ``Accuracy()``, ``Precision(average=...)``, ``ConfusionMatrix(C)`` on logits (N, C)
    and class indices (N,), ``MeanSquaredError()`` on (N, O), attached as given.

    Args:
        model: a model following the contract of ``create_trainer``.
        metrics: name -> Ignite ``Metric``, attached under that name.
        device: where batches go; the model is moved there too.
        execution: ``"auto"``/``"fused"`` (one ``model(x)`` call per batch) or
            ``"stepwise"`` (one ``model.step`` call per time step).
        amp_dtype: None, ``torch.bfloat16`` or ``torch.float16``: autocast around the
            forward (y_pred is returned in y's dtype); autocast around ``evaluator.run``
            is refused.
        non_blocking: passed to the batch transfer.
        prepare_batch: ``(batch, device, non_blocking) -> (x, y)``, ``(x, y, mask)`` or
            ``(x, y, mask, reset)``.
        engine: deprecated name of ``execution``.
        carry_state: stream evaluation (``ignite_lstm.engine.carry``): lane i of a batch continues
            lane i of the previous one (a series in chunks gives the numbers of it whole),
            fresh where ``reset`` says and at each run start, unless ``set_state`` gave a
            state (e.g. ``trainer.state.carried_state``). The model needs ``state_batch_dim``.
        targets: ``"step"`` or ``"last"``, as in ``create_trainer``.

    Returns:
        An ``Engine`` (a ``CarryingEngine`` with ``carry_state``, its state in
        ``evaluator.state.carried_state``); after ``evaluator.run(loader)`` the values
        are in ``evaluator.state.metrics``.

    Example:
        >>> evaluator = create_evaluator(model, build_metrics([1.0, 3.0, 5.0, 7.0]))
        >>> evaluator.run(loader).metrics["mse"]
    """
    execution = resolve_execution(execution, engine)
    check_amp_dtype(amp_dtype)
    check_carry_state(carry_state)
    check_targets(targets)
    _to_device(model, device, optimizer=False)
    net = unwrap(model)  # no gradients here, so no DDP hooks are needed
    step = step_fn(net)

    @torch.no_grad()
    def _infer(engine: Engine, batch) -> dict[str, torch.Tensor]:
        x, y, mask, reset = check_prepared(prepare_batch(batch, device, non_blocking))
        refuse_outer_autocast(x)
        x, y, mask = prepare_targets(targets, x, y, mask)
        net.eval()
        state = cast(CarryingEngine, engine).begin_batch(x, reset) if carry_state else None
        with amp_context(x, amp_dtype):
            y_pred, state = run_steps(step, x, state) if execution == "stepwise" else net(x, state)
        if carry_state:
            cast(CarryingEngine, engine).end_batch(state)
        if amp_dtype is not None:  # back to the precision of the targets (of x for class indices)
            y_pred = y_pred.to(y.dtype if y.is_floating_point() else x.dtype)
        if mask is None:
            return {
                "y_pred": y_pred.reshape(-1, y_pred.shape[-1]),
                "y": y.reshape(-1, *y.shape[2:]),
                "x": x.reshape(-1, x.shape[-1]),
            }
        return {"y_pred": y_pred[mask], "y": y[mask], "x": x[mask]}  # the counted rows

    evaluator = CarryingEngine(_infer, model, checkpointed=False) if carry_state else Engine(_infer)
    for name, metric in (metrics or {}).items():
        metric.attach(evaluator, name)
    return evaluator
