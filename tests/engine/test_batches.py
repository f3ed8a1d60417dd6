"""Batches with masks: the forms a batch takes, the padding collate, and masked training on every path.

The reference for a padded batch of sequences of different lengths is each sequence run
alone, unpadded, by the hand-written cell loop of ``lstm_reference``, its state detached
at the same window boundaries; the loss is the mean over all their steps.
"""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from ignite.engine import Engine, Events
from lstm_reference import hand_run
from torch.nn.utils.rnn import pack_padded_sequence

from ignite_lstm.app.task.metrics import METRIC_NAMES, build_metrics
from ignite_lstm.engine.batches import collate_sequences, parse_batch, prepare_batch
from ignite_lstm.engine.factories import TimeEvents, create_evaluator, create_trainer
from ignite_lstm.models import native
from ignite_lstm.models.lstm import StatefulLSTM

F_IN, H, O = 3, 5, 2
LENGTHS = (37, 50, 12)
RTOL = 1e-10


def _model(seed=0):
    torch.manual_seed(seed)
    return StatefulLSTM(F_IN, H, num_layers=2, output_size=O).double()


def _sequences(lengths=LENGTHS, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(n, F_IN, generator=gen, dtype=torch.float64),
            torch.randn(n, O, generator=gen, dtype=torch.float64),
        )
        for n in lengths
    ]


def _padded(sequences):
    """The collated batch, its targets NaN at the padded steps (a leak would show as NaN)."""
    x, y, mask = collate_sequences(sequences)
    return x, y.masked_fill(~mask[..., None], float("nan")), mask


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _reference(model, sequences, window, update="sequence", lr=0.1):
    """Loss, gradients (update="sequence") or parameters after the batch ("window"), and the window losses.

    Window losses: per window of ``window`` steps, the mean over the counted positions in it.
    """
    model = copy.deepcopy(model)
    steps = max(x.shape[0] for x, _ in sequences)
    states = [None] * len(sequences)
    losses, total, count = [], 0.0, sum(x.shape[0] for x, _ in sequences)
    model.zero_grad()
    for start in range(0, steps, window):
        sums, n = [], 0
        for i, (x, y) in enumerate(sequences):
            if start >= x.shape[0]:
                continue
            y_pred, states[i] = hand_run(model, x[None, start : start + window], None, states[i])
            states[i] = ([h.detach() for h in states[i][0]], [c.detach() for c in states[i][1]])
            target = y[None, start : start + window]
            sums.append(F.mse_loss(y_pred, target, reduction="sum") / O)  # per-position losses, summed
            n += target.shape[1]
        window_sum = torch.stack(sums).sum()
        losses.append(window_sum.item() / n)
        if update == "window":
            model.zero_grad()
            (window_sum / n).backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= lr * p.grad
        else:
            (window_sum / count).backward()
            total += window_sum.item()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    return {"loss": total / count, "grads": grads, "params": dict(model.named_parameters()), "windows": losses}


# (path, tbptt_steps, chunk_steps, native kernel on): every execution path, the native kernel and PyTorch's code
PATHS = [
    ("stepwise", 1, 250, False),
    ("stepwise", 8, 250, False),
    ("fused", 8, 250, True),
    ("fused", 8, 250, False),
    ("fused", 50, 250, True),
    ("fused-detached", 1, 16, True),
    ("fused-detached", 1, 16, False),
]


def _train_one_batch(model, batch, path, tbptt_steps, chunk_steps, kernel, update="sequence", loss_fn=None):
    trainer = create_trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        loss_fn or nn.MSELoss(),
        tbptt_steps=tbptt_steps,
        update=update,
        chunk_steps=chunk_steps,
        execution="stepwise" if path == "stepwise" else "auto",
    )
    assert trainer.state.execution == path
    windows = []
    trainer.add_event_handler(TimeEvents.CHUNK_COMPLETED, lambda e: windows.extend(e.state.window_losses.tolist()))
    if kernel:
        assert native.available(batch[0])
        trainer.run([batch], max_epochs=1)
    else:
        with native.disabled():
            trainer.run([batch], max_epochs=1)
    return trainer, windows


@pytest.mark.parametrize("path, tbptt_steps, chunk_steps, kernel", PATHS)
def test_a_padded_batch_with_its_mask_trains_as_each_sequence_alone(path, tbptt_steps, chunk_steps, kernel):
    model, sequences = _model(), _sequences()
    expected = _reference(model, sequences, tbptt_steps)
    trainer, windows = _train_one_batch(model, _padded(sequences), path, tbptt_steps, chunk_steps, kernel)
    assert trainer.state.output["loss"] == pytest.approx(expected["loss"], rel=RTOL)
    for name, grad in expected["grads"].items():
        assert _rel(dict(model.named_parameters())[name].grad, grad) <= RTOL, name
    assert windows == pytest.approx(expected["windows"], rel=RTOL)
    assert trainer.state.window == len(expected["windows"])  # ceil(50 / tbptt_steps) windows


@pytest.mark.parametrize("path", ["stepwise", "fused"])
def test_window_updates_with_a_mask_step_on_each_windows_counted_mean(path):
    model, sequences = _model(), _sequences()
    expected = _reference(model, sequences, 8, update="window")
    trainer, windows = _train_one_batch(model, _padded(sequences), path, 8, 250, False, update="window")
    for name, value in expected["params"].items():
        assert _rel(dict(model.named_parameters())[name].detach(), value.detach()) <= RTOL, name
    assert windows == pytest.approx(expected["windows"], rel=RTOL)


def test_a_window_without_a_counted_step_has_a_nan_loss_no_weight_and_no_optimizer_step():
    model = _model()
    x, y, mask = collate_sequences(_sequences((12, 9)))
    mask[:, 4:8] = False  # the second window of 4 steps counts nowhere
    steps = []
    trainer = create_trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss(), tbptt_steps=4, update="window"
    )
    trainer.add_event_handler(TimeEvents.WINDOW_COMPLETED, lambda e: steps.append(e.state.window_loss.item()))
    seen = []
    trainer.add_event_handler(
        TimeEvents.WINDOW_STARTED, lambda e: seen.append([p.detach().clone() for p in model.parameters()])
    )
    trainer.run([(x, y, mask)], max_epochs=1)
    assert math.isnan(steps[1]) and all(math.isfinite(v) for v in steps[:1] + steps[2:])
    assert len(steps) == 3 and math.isfinite(trainer.state.output["loss"])
    # no step after the empty window: the third window starts from the second's weights
    assert all(torch.equal(a, b) for a, b in zip(seen[1], seen[2]))
    assert not all(torch.equal(a, b) for a, b in zip(seen[0], seen[1]))


def test_a_batch_that_counts_nowhere_is_refused():
    model = _model()
    x, y, mask = collate_sequences(_sequences((5, 3)))
    trainer = create_trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss())
    with pytest.raises(ValueError, match="Argument batch should have at least one step that counts"):
        trainer.run([(x, y, torch.zeros_like(mask))], max_epochs=1)


@pytest.mark.parametrize("execution", ["fused", "stepwise"])
def test_every_metric_of_a_padded_batch_equals_that_of_the_sequences_alone(execution):
    model, sequences = _model(), _sequences()
    frequencies = [1.0, 2.0]  # selector x[:, 1:3]

    def all_metrics():
        return build_metrics(frequencies, names=METRIC_NAMES, per_frequency=METRIC_NAMES)

    x, y, mask = _padded(sequences)
    x = x.masked_fill(~mask[..., None], float("nan"))  # padded inputs only reach padded outputs
    padded = create_evaluator(model, all_metrics(), execution=execution).run([(x, y, mask)]).metrics
    # the reference: each sequence run alone, every metric over all their steps in one update
    # (Ignite's MSE/MAE add batch sums in float32: another batching would round differently)
    with torch.no_grad():
        y_alone = torch.cat([hand_run(model, sx[None])[0][0] for sx, _ in sequences])
    rows = {"y_pred": y_alone, "y": torch.cat([sy for _, sy in sequences]), "x": torch.cat([sx for sx, _ in sequences])}
    reference = Engine(lambda e, batch: batch)
    for name, metric in all_metrics().items():
        metric.attach(reference, name)
    alone = reference.run([rows]).metrics
    assert len(alone) == len(METRIC_NAMES) * 3 + 1  # overall, two frequencies, mse_worst
    for name, value in alone.items():
        assert math.isfinite(padded[name]), name
        assert padded[name] == pytest.approx(value, rel=RTOL), name


def test_the_evaluator_output_holds_the_counted_rows_only():
    x, y, mask = collate_sequences(_sequences((4, 2)))
    out = create_evaluator(_model()).run([{"x": x, "y": y, "mask": mask}]).output
    assert set(out) == {"y_pred", "y", "x"}
    assert out["y_pred"].shape == (6, O) and torch.equal(out["y"], y[mask]) and torch.equal(out["x"], x[mask])


# --- the window count with batches of different lengths ------------------------------------------------


@pytest.mark.parametrize("tbptt_steps, update, expected", [(4, "window", [3, 5, 8]), (1, "sequence", [10, 17, 27])])
def test_the_window_count_follows_the_real_windows_and_resumes_from_the_trainer_state(
    tmp_path, tbptt_steps, update, expected
):
    # batches of 10, 7 and 10 steps: ceil(T / tbptt_steps) windows each
    batches = [collate_sequences(_sequences(lengths, seed)) for seed, lengths in enumerate([(10, 6), (7, 7), (10, 3)])]

    def trainer_and_counts():
        model = _model()
        trainer = create_trainer(
            model, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss(), tbptt_steps=tbptt_steps, update=update
        )
        counts = []
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: counts.append(e.state.window))
        return trainer, counts

    trainer, counts = trainer_and_counts()
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda e: torch.save(e.state_dict(), tmp_path / "t.pt"))
    trainer.run(batches, max_epochs=2)
    assert counts == expected + [expected[-1] + n for n in expected]
    resumed, again = trainer_and_counts()  # from the file written after epoch 1
    resumed.load_state_dict(torch.load(tmp_path / "t.pt", weights_only=True))
    resumed.run(batches, max_epochs=2)
    assert again == counts[3:]


# --- the forms of a batch ---------------------------------------------------------------------------------


def test_batch_forms_give_the_same_training():
    x, y, mask = collate_sequences(_sequences((6, 4)))
    losses = []
    for batch in [(x, y, mask), [x, y, mask], {"x": x, "y": y, "mask": mask}]:
        model = _model()
        trainer = create_trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss(), tbptt_steps=3)
        losses.append(trainer.run([batch], max_epochs=1).output["loss"])
    assert losses[0] == losses[1] == losses[2]
    full = create_trainer(_model(), torch.optim.SGD(_model().parameters(), lr=0.1), nn.MSELoss(), tbptt_steps=3)
    assert full.run([{"x": x, "y": y}], max_epochs=1).output["loss"] != losses[0]  # the padding would count


@pytest.mark.parametrize(
    "batch, error, msg",
    [
        (
            "xy",
            TypeError,
            "Argument batch should be (x, y), (x, y, mask), (x, y, mask, reset) or a mapping with keys "
            "'x', 'y', 'mask', 'reset', got str.",
        ),
        ((1, 2, 3, 4, 5), TypeError, "got tuple of length 5."),
        (
            {"x": 1},
            ValueError,
            "Argument batch should be a mapping with keys 'x', 'y' and optionally 'mask' and 'reset', got keys ['x'].",
        ),
        ({"x": 1, "y": 2, "lengths": 3}, ValueError, "got keys ['lengths', 'x', 'y']."),
    ],
)
def test_parse_batch_refuses_other_forms(batch, error, msg):
    with pytest.raises(error, match=re.escape(msg)):
        parse_batch(batch)


def test_parse_batch_takes_a_reset_in_every_form():
    x, y, mask, reset = (
        torch.zeros(2, 5, 3),
        torch.zeros(2, 5, 1),
        torch.ones(2, 5, dtype=torch.bool),
        torch.tensor([True, False]),
    )
    for batch in [(x, y, mask, reset), {"x": x, "y": y, "mask": mask, "reset": reset}]:
        assert parse_batch(batch) == (x, y, mask, reset)
    assert parse_batch({"x": x, "y": y, "reset": reset}) == (x, y, None, reset)
    assert parse_batch((x, y)) == (x, y, None, None)
    assert prepare_batch({"x": x, "y": y, "reset": reset})[3] is not None


def test_lengths_in_place_of_a_mask_are_refused_with_the_way_to_a_mask():
    x, y, _ = collate_sequences(_sequences((6, 4)))
    with pytest.raises(
        TypeError,
        match=re.escape(
            "Argument mask should be a (batch, steps) bool tensor, True at the "
            "steps that count, got a torch.int64 tensor; lengths become a mask"
        ),
    ):
        prepare_batch((x, y, torch.tensor([6, 4])))
    with pytest.raises(
        ValueError, match=re.escape("Argument mask should have the shape (batch, steps) = (2, 6) of x, got (2, 5).")
    ):
        prepare_batch((x, y, torch.ones(2, 5, dtype=torch.bool)))


def test_a_packed_sequence_is_refused_pointing_to_the_collate_function():
    x, y, _ = collate_sequences(_sequences((6, 4)))
    packed = pack_padded_sequence(x, torch.tensor([6, 4]), batch_first=True)
    model = _model()
    trainer = create_trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss())
    with pytest.raises(
        TypeError,
        match=re.escape(
            "got a PackedSequence; for sequences of different lengths use "
            "DataLoader(..., collate_fn=ignite_lstm.collate_sequences)"
        ),
    ):
        trainer.run([(packed, y)], max_epochs=1)


def test_collate_sequences_pads_to_the_longest_and_masks_the_rest():
    sequences = _sequences((3, 5, 1))
    x, y, mask = collate_sequences(sequences, padding_value=-1.0)
    assert x.shape == (3, 5, F_IN) and y.shape == (3, 5, O) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [3, 5, 1]
    for i, (sx, sy) in enumerate(sequences):
        n = sx.shape[0]
        assert torch.equal(x[i, :n], sx) and torch.equal(y[i, :n], sy) and mask[i, :n].all()
        assert (x[i, n:] == -1).all() and not mask[i, n:].any()
    dicts = collate_sequences([{"x": sx, "y": sy} for sx, sy in sequences])
    assert all(torch.equal(a, b) for a, b in zip(dicts, collate_sequences(sequences)))


def test_collate_sequences_works_as_a_dataloader_collate_fn():
    loader = torch.utils.data.DataLoader(_sequences((4, 7, 2, 5)), batch_size=2, collate_fn=collate_sequences)
    shapes = [(tuple(x.shape), mask.sum(1).tolist()) for x, _, mask in loader]
    assert shapes == [((2, 7, F_IN), [4, 7]), ((2, 5, F_IN), [2, 5])]


@pytest.mark.parametrize(
    "items, msg",
    [
        ([], "Argument items should be a non-empty sequence of (x, y) sequences."),
        (
            [(torch.zeros(3, 2), torch.zeros(4, 1))],
            "Argument items[0] should hold x (T, F) and y (T, O) floats or (T,) class indices with the same T",
        ),
        ([(torch.zeros(3), torch.zeros(3))], "Argument items[0] should hold x (T, F) and y (T, O)"),
        (
            [(torch.zeros(3, 2), torch.zeros(3, 1), torch.ones(3, dtype=torch.bool))],
            "Argument items[0] should be an (x, y) pair: the mask is built from the lengths.",
        ),
    ],
)
def test_collate_sequences_refuses_what_it_cannot_pad(items, msg):
    with pytest.raises(ValueError, match=re.escape(msg)):
        collate_sequences(items)
