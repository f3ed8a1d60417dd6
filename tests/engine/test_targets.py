"""targets="step"|"last", class-index targets with nn.CrossEntropyLoss as given, NaN padding.

The reference: each sequence run alone by a hand-written LSTM loop (tests/lstm_reference.py),
its state detached at the same global steps as the trainer's windows, the loss the cross-entropy
summed over its counted positions and divided by their number (or their class weights).
"""

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from ignite.engine import Events
from ignite.metrics import Accuracy, ConfusionMatrix, MeanSquaredError, Precision

from ignite_lstm.engine.batches import collate_sequences
from ignite_lstm.engine.factories import TimeEvents, create_evaluator, create_trainer
from ignite_lstm.engine.targets import collate_last
from ignite_lstm.models.lstm import StatefulLSTM
from tests.lstm_reference import hand_run

F_IN, H, C = 3, 5, 4
LENGTHS = (7, 3, 5, 6)
T = max(LENGTHS)
PATHS = [(1, "auto"), (1, "stepwise"), (3, "fused"), (3, "stepwise"), (T, "fused"), (T, "stepwise")]


def _model(seed=0):
    torch.manual_seed(seed)
    return StatefulLSTM(F_IN, H, num_layers=2, output_size=C).double()


def _data(seed=0):
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(n, F_IN, generator=gen, dtype=torch.float64) for n in LENGTHS]
    steps = [torch.randint(0, C, (n,), generator=gen) for n in LENGTHS]
    labels = torch.randint(0, C, (len(LENGTHS),), generator=gen)
    return xs, steps, labels


def _step_batch(pad=float("nan")):
    """Padded by hand (not collate_sequences): the engine alone is under test."""
    xs, steps, _ = _data()
    x = nn.utils.rnn.pad_sequence(xs, batch_first=True, padding_value=pad)
    y = nn.utils.rnn.pad_sequence(steps, batch_first=True, padding_value=-7)  # out of range: never read
    mask = torch.arange(T)[None, :] < torch.tensor(LENGTHS)[:, None]
    return x, y, mask


def test_collate_sequences_takes_class_indices_per_step():
    xs, steps, _ = _data()
    x, y, mask = collate_sequences(list(zip(xs, steps)), padding_value=float("nan"))
    want = _step_batch()
    assert torch.equal(y[mask], want[1][mask]) and y.dtype == torch.int64 and torch.equal(mask, want[2])
    assert torch.equal(x.nan_to_num(), want[0].nan_to_num())


def _last_batch(pad=float("nan")):
    xs, _, labels = _data()
    return collate_last(list(zip(xs, labels)), padding_value=pad)


def _reference(model, window, targets, loss_fn, data=None):
    """The gradient of the batch loss from each sequence alone, detached every `window` steps."""
    xs, steps, labels = data or _data()
    params = list(model.parameters())
    total, weight = 0.0, 0.0
    for b, x in enumerate(xs):
        y_pred, _ = hand_run(model, x[None], window=window)  # (1, T_b, C)
        if targets == "last":
            rows, y = y_pred[0, -1:], labels[b : b + 1]
        else:
            rows, y = y_pred[0], steps[b]
        unreduced = F.cross_entropy(
            rows,
            y,
            weight=loss_fn.weight,
            ignore_index=loss_fn.ignore_index,
            label_smoothing=loss_fn.label_smoothing,
            reduction="none",
        )
        total = total + unreduced.sum()
        kept = y != loss_fn.ignore_index
        weight += float(loss_fn.weight[y[kept]].sum()) if loss_fn.weight is not None else float(kept.sum())
    return torch.autograd.grad(total / weight, params)


def _trained_gradient(model, batch, window, execution, targets, loss_fn, **kwargs):
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    if targets != "step":  # the default: the per-step tests also run on the code before targets= existed
        kwargs["targets"] = targets
    trainer = create_trainer(model, opt, loss_fn, tbptt_steps=window, execution=execution, **kwargs)
    grads = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: grads.append([p.grad.clone() for p in model.parameters()])
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the truncation warning (tested below)
        trainer.run([batch], max_epochs=1)
    return grads[0], trainer


def _rel(a, b):
    a, b = torch.cat([t.flatten() for t in a]), torch.cat([t.flatten() for t in b])
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("window, execution", PATHS)
@pytest.mark.parametrize("targets", ["step", "last"])
def test_class_targets_give_the_gradient_of_each_sequence_alone(window, execution, targets):
    batch = _step_batch() if targets == "step" else _last_batch()
    assert torch.isnan(batch[0]).any()  # NaN in the padding of x
    loss_fn = nn.CrossEntropyLoss()
    got, trainer = _trained_gradient(_model(), batch, window, execution, targets, loss_fn)
    expected_path = {"auto": "fused-detached"}.get(execution, execution)
    assert trainer.state.execution == expected_path
    want = _reference(_model(), window, targets, loss_fn)
    assert _rel(got, want) <= 1e-10


@pytest.mark.parametrize("window, execution", [(1, "auto"), (3, "fused"), (3, "stepwise")])
def test_cross_entropy_with_weight_smoothing_and_ignore_index_as_given(window, execution):
    x, y, mask = _step_batch()
    y[0, 2] = y[2, 4] = -100  # ignored positions: they count nowhere
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=torch.float64), label_smoothing=0.1)
    got, trainer = _trained_gradient(_model(), (x, y, mask), window, execution, "step", loss_fn)
    xs, steps, labels = _data()
    steps[0][2] = steps[2][4] = -100  # the reference reads the same labels
    want = _reference(_model(), window, "step", loss_fn, (xs, steps, labels))
    assert _rel(got, want) <= 1e-10
    # the reported loss is the loss as given on all counted positions at once
    y_pred, _ = _model()(torch.where(mask[..., None], x, 0.0))
    whole = loss_fn(y_pred[mask], y[mask])
    assert trainer.state.output["loss"] == pytest.approx(whole.item(), rel=1e-12)


@pytest.mark.parametrize("window, execution", PATHS)
def test_nan_padding_gives_the_numbers_of_zero_padding(window, execution):
    for targets, make in (("step", _step_batch), ("last", _last_batch)):
        with_nan, _ = _trained_gradient(_model(), make(float("nan")), window, execution, targets, nn.CrossEntropyLoss())
        with_zero, _ = _trained_gradient(_model(), make(0.0), window, execution, targets, nn.CrossEntropyLoss())
        assert all(torch.equal(a, b) for a, b in zip(with_nan, with_zero))
        assert all(torch.isfinite(a).all() for a in with_nan)


@pytest.mark.parametrize("window, execution", PATHS)
def test_nan_padding_of_float_targets_per_step_gives_the_numbers_of_zero_padding(window, execution):
    xs, _, _ = _data()
    gen = torch.Generator().manual_seed(3)
    ys = [torch.randn(len(x), 1, generator=gen, dtype=torch.float64) for x in xs]
    grads = {}
    for pad in ("nan", "0"):
        x, y, mask = collate_sequences(list(zip(xs, ys)), padding_value=float(pad))
        torch.manual_seed(0)
        model = StatefulLSTM(F_IN, H, num_layers=2).double()
        grads[pad], _ = _trained_gradient(model, (x, y, mask), window, execution, "step", nn.MSELoss())
    assert all(torch.isfinite(g).all() for g in grads["nan"])
    assert all(torch.equal(a, b) for a, b in zip(grads["nan"], grads["0"]))


def test_float_targets_per_sequence_and_nan_in_uncounted_y():
    xs, _, _ = _data()
    gen = torch.Generator().manual_seed(1)
    targets = [torch.randn(2, generator=gen, dtype=torch.float64) for _ in xs]
    batch = collate_last(list(zip(xs, targets)), padding_value=float("nan"))
    assert batch[1].shape == (len(xs), 2)
    model = StatefulLSTM(F_IN, H, output_size=2).double()
    got, _ = _trained_gradient(model, batch, T, "fused", "last", nn.MSELoss())
    model.zero_grad()
    rows = torch.stack([hand_run(model, x[None])[0][0, -1] for x in xs])
    want = torch.autograd.grad(F.mse_loss(rows, torch.stack(targets)), list(model.parameters()))
    assert _rel(got, want) <= 1e-10
    # per step: NaN targets at uncounted steps are never read
    ys = [torch.randn(len(x), 2, generator=gen, dtype=torch.float64) for x in xs]
    x, y, mask = collate_sequences(list(zip(xs, ys)), padding_value=float("nan"))
    got, trainer = _trained_gradient(model, (x, y, mask), 3, "fused", "step", nn.MSELoss())
    assert all(torch.isfinite(g).all() for g in got) and trainer.state.output["loss"] == trainer.state.output["loss"]


@pytest.mark.parametrize("execution", ["fused", "stepwise"])
def test_accuracy_and_other_ignite_metrics_attached_as_given(execution):
    model = _model()
    metrics = lambda: {  # noqa: E731
        "accuracy": Accuracy(),
        "precision": Precision(average="macro"),
        "cm": ConfusionMatrix(C),
    }
    x, y, mask = _step_batch()
    y_pred, _ = model(torch.where(mask[..., None], x, 0.0))
    per_step = create_evaluator(model, metrics(), execution=execution).run([(x, y, mask)]).metrics
    predicted = y_pred.argmax(-1)
    assert per_step["cm"].sum() == mask.sum()
    assert per_step["accuracy"] == (predicted[mask] == y[mask]).double().mean().item()
    assert per_step["cm"].sum() == mask.sum()
    xl, labels, maskl = _last_batch()
    last_rows = y_pred[torch.arange(len(LENGTHS)), torch.tensor(LENGTHS) - 1]
    last = create_evaluator(model, metrics(), execution=execution, targets="last").run([(xl, labels, maskl)]).metrics
    assert last["accuracy"] == (last_rows.argmax(-1) == labels).double().mean().item()
    assert last["cm"].sum() == len(LENGTHS)
    mse = create_evaluator(model, {"mse": MeanSquaredError()}, execution=execution)
    ys = torch.randn(len(LENGTHS), T, C, dtype=torch.float64)
    out = mse.run([(x, ys, mask)]).metrics["mse"]
    assert out == pytest.approx(
        ((y_pred[mask] - ys[mask]) ** 2).sum(-1).mean().item(), rel=1e-6
    )  # Ignite: per row, float32 sums


def test_last_targets_without_a_mask_use_the_final_step():
    model = _model()
    x = torch.randn(3, 4, F_IN, dtype=torch.float64)
    labels = torch.tensor([0, 2, 1])
    out = create_evaluator(model, targets="last").run([(x, labels)]).output
    torch.testing.assert_close(out["y_pred"], model(x)[0][:, -1], rtol=0, atol=1e-12)
    assert torch.equal(out["y"], labels) and out["x"].shape == (3, F_IN)


def test_targets_shapes_are_checked_with_the_cure():
    model = _model()
    x, labels, mask = _last_batch()
    with pytest.raises(ValueError, match=r"y of shape \(B, T\) = \(4, 7\) class indices .*\(one target per sequence: "):
        create_evaluator(model).run([(x, labels, mask)])
    with pytest.raises(ValueError, match=r"Argument targets should be one of \('step', 'last'\), got 'final'"):
        create_trainer(model, torch.optim.SGD(model.parameters(), 0.1), nn.CrossEntropyLoss(), targets="final")
    with pytest.raises(TypeError, match="Argument targets should be a string, got int."):
        create_evaluator(model, targets=1)


def test_last_target_with_a_short_window_warns_once_with_the_cure():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = create_trainer(model, opt, nn.CrossEntropyLoss(), targets="last")  # tbptt_steps=1
    with pytest.warns(UserWarning, match=r"targets='last' with windows of tbptt_steps=1.*pass tbptt_steps >= 7") as rec:
        trainer.run([_last_batch(), _last_batch()], max_epochs=1)
    assert sum("targets='last'" in str(w.message) for w in rec) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        create_trainer(model, opt, nn.CrossEntropyLoss(), targets="last", tbptt_steps=T).run([_last_batch()])


def test_a_mask_that_counts_only_late_steps_warns():
    model = _model()
    x, y, mask = _step_batch()
    late = mask.clone()
    late[:, :4] = False
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = create_trainer(model, opt, nn.CrossEntropyLoss(), tbptt_steps=2)
    with pytest.warns(UserWarning, match="a mask that counts only late steps with windows of tbptt_steps=2"):
        trainer.run([(x, y, late)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # padding at the end is no truncation
        create_trainer(model, opt, nn.CrossEntropyLoss(), tbptt_steps=2).run([(x, y, mask)])


def test_window_handlers_on_the_fused_detached_path_warn():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = create_trainer(model, opt, nn.CrossEntropyLoss())
    fired = []
    trainer.add_event_handler(TimeEvents.WINDOW_COMPLETED(every=5), lambda e: fired.append(1))
    with pytest.warns(UserWarning, match=r"TimeEvents.WINDOW_COMPLETED, which never fire on the fused-detached"):
        trainer.run([_step_batch()])
    assert fired == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stepwise = create_trainer(model, opt, nn.CrossEntropyLoss(), execution="stepwise")
        stepwise.add_event_handler(TimeEvents.WINDOW_COMPLETED(every=5), lambda e: fired.append(1))
        stepwise.run([_step_batch()])
    assert len(fired) == T // 5
