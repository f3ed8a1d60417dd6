"""Stream evaluation (``create_evaluator(..., carry_state=True)``), in float64.

A long series evaluated chunk by chunk gives every metric of ``build_metrics`` of it
evaluated whole (lanes that end inside a chunk masked there), a ``reset`` in the middle of
a lane is a fresh start there, and every run starts fresh unless ``set_state`` gave it the
state to continue from (the training stream's, e.g.): on the ``fused`` path (native kernel
and PyTorch's code) and the ``stepwise`` one.
"""

from __future__ import annotations

import pytest
import torch
from carry_helpers import TOL, B, C, T, backend, chunked, make_model, stream, train, two_series_in_lane_0
from ignite.engine import Events

from ignite_lstm.app.task.metrics import METRIC_NAMES, build_metrics
from ignite_lstm.engine.factories import create_evaluator, set_state

# --- stream evaluation -------------------------------------------------------------------------------------

EVAL_PATHS = [("fused", True), ("fused", False), ("stepwise", False)]


def _evaluate(model, batches, execution: str, kernel: bool, carry_state: bool, state=None) -> tuple[dict, list]:
    evaluator = create_evaluator(
        model, build_metrics([1.0, 3.0], per_frequency=METRIC_NAMES), execution=execution, carry_state=carry_state
    )
    outputs = []
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(e.state.output["y_pred"]))
    if state is not None:
        set_state(evaluator, state)
    with backend(kernel):
        metrics = evaluator.run(batches).metrics
    return metrics, outputs


def _assert_same_metrics(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected) and len(got) == 3 * len(METRIC_NAMES) + 1  # and mse_worst
    for name, value in expected.items():
        # Ignite's MeanAbsoluteError keeps its running sum in float32 (the others in float64), so
        # summed in other pieces it agrees to float32's precision only.
        rel = 1e-6 if name.startswith("mae") else TOL
        assert got[name] == pytest.approx(value, rel=rel, abs=1e-12), name


@pytest.mark.parametrize("execution, kernel", EVAL_PATHS)
def test_stream_evaluation_chunk_by_chunk_equals_the_whole_sequences(execution, kernel):
    whole, model = stream(), make_model()
    whole["mask"] = torch.arange(T)[None, :] < torch.tensor([T, 17, 9])[:, None]  # lanes that end inside a chunk
    expected, _ = _evaluate(model, [whole], execution, kernel, carry_state=False)
    got, _ = _evaluate(model, chunked(whole), execution, kernel, carry_state=True)
    _assert_same_metrics(got, expected)
    fresh, _ = _evaluate(model, chunked(whole), execution, kernel, carry_state=False)
    assert abs(fresh["mse"] - expected["mse"]) > 1e-6  # guard: each chunk from a fresh state


@pytest.mark.parametrize("execution, kernel", EVAL_PATHS)
def test_stream_evaluation_resets_a_lane_in_the_middle_as_a_fresh_start(execution, kernel):
    chunks, alone = two_series_in_lane_0()
    model = make_model()
    expected, _ = _evaluate(model, [alone], execution, kernel, carry_state=False)
    got, _ = _evaluate(model, chunks, execution, kernel, carry_state=True)
    _assert_same_metrics(got, expected)


def test_each_evaluation_run_starts_fresh_unless_given_the_state_to_continue():
    whole, model = stream(), make_model()
    chunks = chunked(whole)
    with torch.no_grad():
        y_whole, _ = model(whole["x"])
        y_fresh, _ = model(whole["x"][:, 2 * C :])
    evaluator = create_evaluator(model, carry_state=True)
    evaluator.run(chunks[:2])
    after_two = evaluator.state.carried_state
    assert evaluator.run(chunks[2:]).output["y_pred"].view(B, C, 1).allclose(y_fresh, rtol=TOL, atol=0)
    set_state(evaluator, after_two)  # continue where the first run ended
    assert evaluator.run(chunks[2:]).output["y_pred"].view(B, C, 1).allclose(y_whole[:, 2 * C :], rtol=TOL, atol=0)
    # the use case: validation continues where the training stream ended
    _, trainer = train(chunks[:2], "fused", True, max_epochs=1, model=model, carry_state=True, tbptt_steps=C)
    with torch.no_grad():
        expected, _ = model(whole["x"][:, 2 * C :], trainer.state.carried_state)
    set_state(evaluator, trainer.state.carried_state)
    assert evaluator.run(chunks[2:]).output["y_pred"].view(B, C, 1).allclose(expected, rtol=TOL, atol=0)
