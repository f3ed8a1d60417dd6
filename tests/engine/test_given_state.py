"""A state given by ``set_state`` starts the next run whatever its first batch's ``reset`` flags say, in float64.

A stream's first chunk has ``reset`` True in every lane (its series start there); after
``set_state`` the run must continue the given state instead, and a ``reset`` in a later
chunk still starts its lane fresh. Checked against the continuation computed by hand
(``model(x, state)``), for the evaluator (``fused`` on the native kernel and on PyTorch's
code, ``stepwise``) and the trainer (every path; learning rate 0, so that every chunk's
reported loss is the loss of the hand continuation under the same weights), with one
lane and with several.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from carry_helpers import PATHS, TOL, B, C, T, backend, chunked, make_model, stream
from ignite.engine import Events

from ignite_lstm.data.streams import StreamLoader
from ignite_lstm.engine.factories import create_evaluator, create_trainer, set_state

EVAL_PATHS = [("fused", True), ("fused", False), ("stepwise", False)]
PREFIX = 7  # steps that make the given state


def _case(lanes: int):
    """A model, a given state (from PREFIX steps of other inputs), the stream's chunks and the hand continuation.

    The chunks carry ``reset`` True in every lane at chunk 0 and in lane 0 at chunk 2;
    the hand continuation (lanes, T, 1) continues the given state in every lane, lane 0 fresh from chunk 2 on.
    """
    model = make_model()
    s = stream(lanes=lanes)
    prefix = stream(lanes=lanes, steps=PREFIX, seed=5)["x"]
    first = torch.ones(lanes, dtype=torch.bool)
    later = torch.zeros(lanes, dtype=torch.bool)
    later[0] = True
    chunks = chunked(s, {0: first, 2: later})
    with torch.no_grad():
        _, given = model(prefix)
        y_hand, _ = model(s["x"], given)
        y_fresh, _ = model(s["x"][:1, 2 * C :])
    y_hand = y_hand.clone()
    y_hand[0, 2 * C :] = y_fresh[0]
    return model, given, chunks, s, y_hand


@pytest.mark.parametrize("lanes", [1, B])
@pytest.mark.parametrize("execution, kernel", EVAL_PATHS)
def test_an_evaluation_continues_the_given_state_despite_the_first_reset(execution, kernel, lanes):
    model, given, chunks, _, y_hand = _case(lanes)
    evaluator = create_evaluator(model, execution=execution, carry_state=True)
    outputs = []
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(e.state.output["y_pred"]))
    set_state(evaluator, given)
    with backend(kernel):
        evaluator.run(chunks)
    got = torch.cat([o.view(lanes, C, 1) for o in outputs], dim=1)
    assert got.allclose(y_hand, rtol=TOL, atol=1e-12)
    # the next run, without set_state, honours the first chunk's reset: a fresh start
    outputs.clear()
    with backend(kernel):
        evaluator.run(chunks[:1])
    with torch.no_grad():
        y_zero, _ = model(chunks[0]["x"])
    assert outputs[0].view(lanes, C, 1).allclose(y_zero, rtol=TOL, atol=1e-12)
    assert not y_zero.allclose(y_hand[:, :C], rtol=1e-6, atol=1e-9)  # guard: the given state matters


@pytest.mark.parametrize("lanes", [1, B])
@pytest.mark.parametrize("path, kernel", PATHS)
def test_training_continues_the_given_state_despite_the_first_reset(path, kernel, lanes):
    model, given, chunks, s, y_hand = _case(lanes)
    kw = {"tbptt_steps": 1, "chunk_steps": C // 2} if path == "fused-detached" else {"tbptt_steps": C // 2}
    trainer = create_trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),  # the weights stay: the hand continuation holds for every chunk
        nn.MSELoss(),
        execution="stepwise" if path == "stepwise" else "auto",
        carry_state=True,
        **kw,
    )
    assert trainer.state.execution == path
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"]))
    set_state(trainer, given)
    with backend(kernel):
        trainer.run(chunks, max_epochs=1)
    expected = [((y_hand[:, k : k + C] - s["y"][:, k : k + C]) ** 2).mean().item() for k in range(0, T, C)]
    assert losses == pytest.approx(expected, rel=TOL)


@pytest.mark.parametrize("lanes", [1, B])
def test_a_stream_loader_run_after_set_state_equals_the_hand_continuation(lanes):
    # the case: StreamLoader's first chunk has reset=True; the evaluation must still start from the state
    model = make_model()
    s = stream(lanes=lanes)
    with torch.no_grad():
        _, given = model(stream(lanes=lanes, steps=PREFIX, seed=5)["x"])
        y_hand, _ = model(s["x"], given)
        y_zero, _ = model(s["x"])
    loader = StreamLoader([(s["x"][i], s["y"][i]) for i in range(lanes)], lanes=lanes, chunk_steps=C)
    assert bool(next(iter(loader))["reset"].all())
    evaluator = create_evaluator(model, carry_state=True)
    outputs = []
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(e.state.output["y_pred"]))
    set_state(evaluator, given)
    evaluator.run(StreamLoader([(s["x"][i], s["y"][i]) for i in range(lanes)], lanes=lanes, chunk_steps=C))
    got = torch.cat([o.view(lanes, C, 1) for o in outputs], dim=1)
    assert got.allclose(y_hand, rtol=TOL, atol=1e-12)
    assert not got.allclose(y_zero, rtol=1e-6, atol=1e-9)


def test_a_given_state_of_other_lanes_is_refused_by_name():
    model, given, chunks, _, _ = _case(B)
    evaluator = create_evaluator(model, carry_state=True)
    set_state(evaluator, given)
    with pytest.raises(ValueError, match="has 1 lanes but the state given by set_state has 3"):
        evaluator.run([{k: v[:1] for k, v in chunks[0].items()}])
