"""State carried across batches (``carry_state=True``, ``ignite_lstm.engine.carry``) in training, in float64.

A long series laid out in B lanes and cut into chunks of C steps trains as the same
lanes in one batch, on every execution path (``stepwise``, ``fused`` and
``fused-detached``, each ``fused`` path on the native kernel and on PyTorch's code),
each case equal by construction (the same windows at the same steps, the same optimizer
steps):

- ``update="window"`` with windows of C or C/2 steps against the whole batch's
  ``update="window"`` (the issue's criterion);
- ``update="sequence"`` with one window per chunk (an optimizer step per chunk) against the
  whole batch's ``update="window"``;
- ``update="sequence"`` with the T/C chunks' gradients accumulated
  (``gradient_accumulation_steps=T/C``, every chunk counting the same positions) against
  the whole batch's one ``update="sequence"`` step;
- ``fused-detached`` (``tbptt_steps=1``, ``update="sequence"`` only): the accumulated form
  with the same ``chunk_steps`` on both sides, and, with an optimizer step per chunk, the
  literal per-step loop (``stepwise``) carrying the same stream.

Two epochs each: every epoch starts every lane fresh. A lane whose series ends inside a
chunk, masked to the chunk's end and reset by the next chunk, trains as its two series in
lanes of their own, by hand and through ``StreamLoader``. Then: when lanes start fresh,
what is refused, other state forms, mixed precision. Stream evaluation:
``test_carry_evaluation.py``; checkpoints and 2 processes: ``test_carry_checkpoint.py``.
"""

from __future__ import annotations

import contextlib
import re

import pytest
import torch
import torch.nn as nn
from carry_helpers import (
    DTYPE,
    F_IN,
    PATHS,
    TOL,
    B,
    C,
    T,
    chunked,
    make_model,
    max_rel,
    same_state,
    stream,
    train,
    two_series_in_lane_0,
)
from ignite.engine import Events

from ignite_lstm.data.streams import StreamLoader
from ignite_lstm.engine.batches import collate_sequences
from ignite_lstm.engine.carry import CarryingEngine
from ignite_lstm.engine.factories import create_evaluator, create_trainer, reset_state, set_state
from ignite_lstm.engine.state import state_tensors
from ignite_lstm.models.lstm import StatefulLSTM

# (stream settings, whole-batch settings) per path, equal by construction (module docstring)
WINDOW_CASES = {
    "window": ({"tbptt_steps": C, "update": "window"}, {"tbptt_steps": C, "update": "window"}),
    "two-windows-per-chunk": ({"tbptt_steps": C // 2, "update": "window"}, {"tbptt_steps": C // 2, "update": "window"}),
    "sequence-per-chunk": ({"tbptt_steps": C, "update": "sequence"}, {"tbptt_steps": C, "update": "window"}),
    "sequence-accumulated": (
        {"tbptt_steps": C // 2, "update": "sequence", "gradient_accumulation_steps": T // C},
        {"tbptt_steps": C // 2, "update": "sequence"},
    ),
}
DETACHED_CASES = {
    "accumulated": (
        {"tbptt_steps": 1, "chunk_steps": C // 2, "gradient_accumulation_steps": T // C},
        {"tbptt_steps": 1, "chunk_steps": C // 2},
    ),
}


# --- (a) training: a stream in chunks trains as the whole batch ------------------------------------------


@pytest.mark.parametrize("path, kernel", PATHS)
def test_a_stream_in_chunks_trains_as_the_whole_batch(path, kernel):
    whole = stream()
    for name, (stream_kw, whole_kw) in (DETACHED_CASES if path == "fused-detached" else WINDOW_CASES).items():
        streamed, trainer = train(chunked(whole), path, kernel, carry_state=True, **stream_kw)
        reference, whole_trainer = train([whole], path, kernel, **whole_kw)
        assert max_rel(streamed, reference) <= TOL, name
        # the window events see the same windows: their count and losses
        assert trainer.state.window == whole_trainer.state.window, name
        assert trainer.state.recorded_windows == pytest.approx(whole_trainer.state.recorded_windows, rel=TOL), name


@pytest.mark.parametrize("kernel", [True, False])
def test_fused_detached_carries_the_stream_as_the_literal_per_step_loop(kernel):
    chunks = chunked(stream())  # an optimizer step per chunk: no whole-batch form; the literal loop is the reference
    fast, _ = train(chunks, "fused-detached", kernel, carry_state=True, tbptt_steps=1, chunk_steps=C // 2)
    literal, _ = train(chunks, "stepwise", False, carry_state=True, tbptt_steps=1)
    assert max_rel(fast, literal) <= TOL


def test_without_carry_state_each_chunk_starts_fresh_and_trains_otherwise():
    whole = stream()
    fresh, _ = train(chunked(whole), "fused", True, tbptt_steps=C, update="window")
    reference, _ = train([whole], "fused", True, tbptt_steps=C, update="window")
    assert max_rel(fresh, reference) > 1e-4


@pytest.mark.parametrize("path, kernel", PATHS)
def test_a_lane_masked_to_its_chunk_end_and_reset_trains_as_its_two_series_alone(path, kernel):
    chunks, alone = two_series_in_lane_0()
    assert len({int(c["mask"].sum()) for c in chunks}) == 1  # equal counts: accumulation gives the global mean
    kw = {"tbptt_steps": 1, "chunk_steps": C // 2} if path == "fused-detached" else {"tbptt_steps": C // 2}
    streamed, _ = train(chunks, path, kernel, carry_state=True, gradient_accumulation_steps=len(chunks), **kw)
    reference, _ = train([alone], path, kernel, **kw)
    assert max_rel(streamed, reference) <= TOL
    for chunk in chunks:
        chunk.pop("reset", None)  # guard: without the reset, B continues from the end of A's chunk
    carried_on, _ = train(chunks, path, kernel, carry_state=True, gradient_accumulation_steps=len(chunks), **kw)
    assert max_rel(carried_on, reference) > 1e-6


def test_a_stream_loader_s_batches_train_as_its_series_each_in_a_lane_of_its_own():
    # StreamLoader packs [A, E, F, B, G] into 2 lanes of 8-step chunks: lane 0 holds A (12 steps) then B (12),
    # lane 1 E (4), F (12), G (8); every chunk counts 12 positions, so accumulating its 4 chunks into one
    # step is the one step of the five series side by side (windows of 4: aligned, each series starting at
    # a chunk boundary).
    g = torch.Generator().manual_seed(2)
    series = [
        (torch.randn(n, F_IN, generator=g, dtype=DTYPE), torch.randn(n, 1, generator=g, dtype=DTYPE))
        for n in (12, 4, 12, 12, 8)
    ]
    layout = StreamLoader(series, lanes=2, chunk_steps=C)
    assert len(layout) == 4 and [int(b["mask"].sum()) for b in layout] == [12] * 4
    assert [b["reset"].tolist() for b in layout] == [[True, True], [False, True], [True, False], [False, True]]
    loader = StreamLoader(series, lanes=2, chunk_steps=C)
    xs, ys, mask = collate_sequences(series)
    kw = {"tbptt_steps": C // 2, "update": "sequence"}
    streamed, _ = train(loader, "fused", True, carry_state=True, gradient_accumulation_steps=len(loader), **kw)
    reference, _ = train([(xs, ys, mask)], "fused", True, **kw)
    assert max_rel(streamed, reference) <= TOL


# --- (b) when lanes start fresh, and what is refused ---------------------------------------------------------


class _Probe(StatefulLSTM):
    """Records the state each forward call starts from (one call per batch at tbptt_steps = C)."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        super().__init__(F_IN, 5, num_layers=2)
        self.to(DTYPE)
        self.seen: list = []

    def forward(self, x, state=None, detach_every_step=False):
        self.seen.append(None if state is None else tuple(s.clone() for s in state))
        return super().forward(x, state, detach_every_step)


def _probe_run(chunks, handlers=(), max_epochs=2):
    model = _Probe()
    trainer = create_trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss(), tbptt_steps=C, carry_state=True
    )
    ends = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: ends.append(e.state.carried_state))
    for event, fn in handlers:
        trainer.add_event_handler(event, fn)
    trainer.run(chunks, max_epochs=max_epochs)
    return model.seen, ends, trainer


def _lanes(state, lanes) -> tuple:
    return tuple(s[:, lanes] for s in state)


def test_each_batch_continues_the_last_one_except_at_epoch_starts_and_where_reset():
    seen, ends, _ = _probe_run(chunked(stream(), {1: torch.tensor([False, True, False])}))
    assert len(seen) == 6 and seen[0] is None and seen[3] is None  # every epoch starts every lane fresh
    assert same_state(_lanes(seen[1], [0, 2]), _lanes(ends[0], [0, 2]))
    assert all(not s[:, 1].any() for s in seen[1]) and ends[0][0][:, 1].abs().sum() > 0  # lane 1 reset
    assert same_state(seen[2], ends[1]) and same_state(seen[5], ends[4])
    seen, _, _ = _probe_run(chunked(stream(), {1: torch.ones(B, dtype=torch.bool)}), max_epochs=1)
    assert seen[1] is None  # every lane reset: the model's own state=None start


def test_a_prepare_batch_of_the_user_s_may_return_the_reset():
    def prepare(batch, device, non_blocking):  # (x, y, reset) batches of the user's own form
        x, y, reset = batch
        return x, y, None, reset

    chunks = chunked(stream(), {1: torch.tensor([False, True, False])})
    as_user = [(c["x"], c["y"], c.get("reset", torch.zeros(B, dtype=torch.bool))) for c in chunks]
    given, _ = train(as_user, "fused", True, carry_state=True, tbptt_steps=C, prepare_batch=prepare)
    mapped, _ = train(chunks, "fused", True, carry_state=True, tbptt_steps=C)
    assert max_rel(given, mapped) == 0.0
    with pytest.raises(
        TypeError, match=re.escape("Argument prepare_batch should return (x, y), (x, y, mask) or (x, y, mask, reset).")
    ):
        train(as_user, "fused", True, carry_state=True, tbptt_steps=C, prepare_batch=lambda b, d, n: (*b, None, 1))


def test_reset_state_called_by_handlers_resets_the_lanes_it_names():
    handlers = [
        (Events.ITERATION_COMPLETED(once=1), lambda e: reset_state(e, [2])),
        (Events.ITERATION_COMPLETED(once=2), lambda e: reset_state(e)),
        (Events.ITERATION_COMPLETED(once=4), lambda e: reset_state(e, torch.tensor([True, False, False]))),
    ]
    seen, ends, trainer = _probe_run(chunked(stream()), handlers)
    assert same_state(_lanes(seen[1], [0, 1]), _lanes(ends[0], [0, 1])) and not any(s[:, 2].any() for s in seen[1])
    assert seen[2] is None
    assert same_state(_lanes(seen[4], [1, 2]), _lanes(ends[3], [1, 2])) and not any(s[:, 0].any() for s in seen[4])
    with pytest.raises(ValueError, match=re.escape("Argument lanes should hold lane indices in [0, 3), got [3].")):
        reset_state(trainer, [3])
    with pytest.raises(
        ValueError, match=re.escape("Argument lanes should be a (3,) bool tensor (the carried lanes), got shape (2,).")
    ):
        reset_state(trainer, torch.ones(2, dtype=torch.bool))
    with pytest.raises(
        TypeError,
        match=re.escape(
            "Argument lanes should be a (B,) bool tensor or a sequence of lane "
            "indices, got a sequence of bools; use torch.tensor(flags)."
        ),
    ):
        reset_state(trainer, [True, False, True])
    plain = create_trainer(make_model(), torch.optim.SGD(make_model().parameters(), lr=0.1), nn.MSELoss())
    for fn in (lambda: reset_state(plain), lambda: set_state(plain, None)):
        with pytest.raises(
            TypeError, match="Argument engine should be an engine made with carry_state=True, got Engine."
        ):
            fn()


def test_a_batch_with_another_number_of_lanes_is_refused_unless_every_lane_is_reset():
    chunks = chunked(stream())
    narrow = {k: v[:2] for k, v in chunks[1].items()}
    msg = "Argument batch has 2 lanes but the carried state has 3: with carry_state=True lane i of a batch continues"
    with pytest.raises(ValueError, match=re.escape(msg)):
        train([chunks[0], narrow], "fused", True, max_epochs=1, carry_state=True, tbptt_steps=C)
    _, trainer = train(
        [chunks[0], {**narrow, "reset": torch.ones(2, dtype=torch.bool)}],
        "fused",
        True,
        max_epochs=1,
        carry_state=True,
        tbptt_steps=C,
    )
    assert trainer.state.carried_state[0].shape == (2, 2, 5)
    with pytest.raises(ValueError, match=re.escape("Argument batch has 2 lanes but the carried state has 3")):
        create_evaluator(make_model(), carry_state=True).run([chunks[0], narrow])


def test_lanes_stepped_through_another_process_s_padding_must_be_reset():
    # On several processes a shorter batch is padded to the longest (test_carry_checkpoint marks
    # it so on 2 real processes); here the trainer is told so, as its process function would be.
    def padded(engine):
        engine.end_batch(engine.state.carried_state, padded=True)

    for resets, refused in (({}, True), ({1: torch.ones(B, dtype=torch.bool)}, False)):
        model = make_model()
        trainer = create_trainer(
            model, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss(), tbptt_steps=C, carry_state=True
        )
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=1), padded)
        msg = "Argument batch continues lanes that were stepped through padding: the previous batch of this process"
        with pytest.raises(ValueError, match=re.escape(msg)) if refused else contextlib.nullcontext():
            trainer.run(chunked(stream(), resets), max_epochs=1)


def test_a_reset_given_to_an_engine_that_does_not_carry_changes_nothing():
    # Every batch of such an engine starts every lane fresh: a reset is already what happens.
    chunks = chunked(stream())
    flags = torch.tensor([True, False, True])
    plain, _ = train(chunks, "fused", True, tbptt_steps=C)
    given, _ = train([{**c, "reset": flags} for c in chunks], "fused", True, tbptt_steps=C)
    as_tuple, _ = train([(c["x"], c["y"], None, flags) for c in chunks], "fused", True, tbptt_steps=C)
    assert max_rel(given, plain) == 0.0 and max_rel(as_tuple, plain) == 0.0
    refused = [
        (
            flags.long(),
            TypeError,
            "Argument reset should be a (batch,) bool tensor, True for the lanes that "
            "start from a fresh state, got a torch.int64 tensor.",
        ),
        (flags[:2], ValueError, "Argument reset should have the shape (batch,) = (3,) of x, got (2,)."),
    ]
    for bad, error, msg in refused:
        for carry in (False, True):
            with pytest.raises(error, match=re.escape(msg)):
                train([{**chunks[0], "reset": bad}], "fused", True, max_epochs=1, carry_state=carry, tbptt_steps=C)


class _GRU(nn.Module):
    """A GRU: its state is one tensor (1, B, H); ``state_batch_dim`` is set by the tests that carry it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.gru, self.head = nn.GRU(F_IN, 4, batch_first=True).to(DTYPE), nn.Linear(4, 1).to(DTYPE)

    def forward(self, x, state=None):
        out, h = self.gru(x, state)
        return self.head(out), h


class _Cell(nn.Module):
    """An LSTM cell with a dict state ``{"cell": (h, c), "steps": (B,)}``, each with the lanes in dimension 0."""

    state_batch_dim = 0

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.cell, self.head = nn.LSTMCell(F_IN, 4).to(DTYPE), nn.Linear(4, 1).to(DTYPE)

    def forward(self, x, state=None):
        if state is None:
            zeros = x.new_zeros(x.shape[0], 4)
            state = {"cell": (zeros, zeros), "steps": x.new_zeros(x.shape[0])}
        h, c = state["cell"]
        outputs = []
        for t in range(x.shape[1]):
            h, c = self.cell(x[:, t], (h, c))
            outputs.append(self.head(h))
        return torch.stack(outputs, 1), {"cell": (h, c), "steps": state["steps"] + x.shape[1]}


def test_models_of_other_state_forms_carry_and_reset_their_lanes():
    whole = stream()
    gru = type("CarriedGRU", (_GRU,), {"state_batch_dim": 1})
    for make in (gru, _Cell):
        streamed, trainer = train(
            chunked(whole), "fused", False, model=make(), carry_state=True, tbptt_steps=C, update="window"
        )
        reference, _ = train([whole], "fused", False, model=make(), tbptt_steps=C, update="window")
        assert max_rel(streamed, reference) <= TOL, make.__name__
        before = trainer.state.carried_state
        reset_state(trainer, [1])
        dim = make.state_batch_dim
        for old, new in zip(state_tensors(before), state_tensors(trainer.state.carried_state)):
            assert not new.select(dim, 1).any() and torch.equal(
                new.index_select(dim, torch.tensor([0, 2])), old.index_select(dim, torch.tensor([0, 2]))
            )
    assert trainer.state.carried_state["steps"].tolist() == [T, 0.0, T]
    msg = (
        "Argument model should have an integer attribute state_batch_dim with carry_state=True: the batch "
        "dimension of every tensor of its state (1 for (layers, B, H) states as in nn.LSTM, nn.GRU and "
        "StatefulLSTM; 0 for (B, H)); _GRU has none."
    )
    with pytest.raises(TypeError, match=re.escape(msg)):
        create_trainer(_GRU(), torch.optim.SGD(_GRU().parameters(), lr=0.1), nn.MSELoss(), carry_state=True)
    with pytest.raises(TypeError, match=re.escape(msg)):
        create_evaluator(_GRU(), carry_state=True)


def test_mixed_precision_bfloat16_carries_the_state():
    whole = stream(dtype=torch.float32)
    kw = {"carry_state": True, "tbptt_steps": C, "update": "window", "amp_dtype": torch.bfloat16}
    streamed, trainer = train(chunked(whole), "fused", True, model=make_model(dtype=torch.float32), **kw)
    kw.pop("carry_state")
    reference, _ = train([whole], "fused", True, model=make_model(dtype=torch.float32), **kw)
    assert trainer.state.carried_state[0].dtype == torch.float32 and isinstance(trainer, CarryingEngine)
    assert max_rel(streamed, reference) <= 1e-6
