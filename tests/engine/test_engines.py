import copy
import re

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from ignite.engine import Engine, Events
from ignite.metrics import MeanAbsoluteError, MeanSquaredError
from lstm_reference import hand_run as _hand_run

from ignite_lstm.engine.factories import (
    TimeEvents,
    create_evaluator,
    create_trainer,
    select_execution,
    set_tbptt_steps,
)
from ignite_lstm.models.lstm import StatefulLSTM

B, T, F_IN, H, O = 3, 10, 3, 5, 1


def _model(num_layers=2, dropout=0.0, output_size=O, seed=0):
    torch.manual_seed(seed)
    return StatefulLSTM(F_IN, H, num_layers=num_layers, dropout=dropout, output_size=output_size).double()


def _batch(seed, batch=B, steps=T, output_size=O):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, steps, F_IN, generator=gen, dtype=torch.float64)
    y = torch.randn(batch, steps, output_size, generator=gen, dtype=torch.float64)
    return x, y


def _hand_loss_and_grads(model, x, y, window=None):
    model = copy.deepcopy(model)
    model.zero_grad()
    loss = F.mse_loss(_hand_run(model, x, window)[0], y)
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters()}


def _grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _assert_grads_close(got, expected, rtol):
    assert got.keys() == expected.keys()
    for name in expected:
        assert _rel(got[name], expected[name]) <= rtol, name


def _max_rel(got, expected):
    return max(_rel(got[name], expected[name]) for name in expected)


def _record_iterations(trainer, model):
    """Per iteration: the model as it was when the iteration started, the output and the gradients."""
    records = []

    @trainer.on(Events.ITERATION_STARTED)
    def _start(_):
        records.append({"model": copy.deepcopy(model)})

    @trainer.on(Events.ITERATION_COMPLETED)
    def _done(engine):
        records[-1].update(output=engine.state.output, grads=_grads(model))

    return records


# (a) state handling: reset per batch, carried across windows, detached at window boundaries

PATHS = [(T, "stepwise"), (T, "fused"), (4, "stepwise"), (4, "fused"), (1, "fused"), (1, "stepwise")]


@pytest.mark.parametrize("tbptt_steps, engine", PATHS)
def test_state_is_reset_at_every_batch(tbptt_steps, engine):
    b1, b2 = _batch(1), _batch(2)
    for data in ([b1, b2], [b2, b1]):
        model = _model()
        trainer = create_trainer(
            model, torch.optim.SGD(model.parameters(), lr=0.5), nn.MSELoss(), tbptt_steps=tbptt_steps, execution=engine
        )
        records = _record_iterations(trainer, model)
        trainer.run(data, max_epochs=1)
        assert len(records) == 2
        for rec, (x, y) in zip(records, data):
            # each batch as if it were the first: fresh zero state, the weights of that moment
            loss, grads = _hand_loss_and_grads(rec["model"], x, y, window=tbptt_steps)
            assert rec["output"]["loss"] == pytest.approx(loss, rel=1e-12)
            _assert_grads_close(rec["grads"], grads, 1e-10)
        # guard: carrying batch 1's final state into batch 2 would change batch 2's loss
        first_model = records[1]["model"]
        (x1, _), (x2, y2) = data
        carried = F.mse_loss(first_model(x2, first_model(x1)[1])[0], y2).item()
        assert abs(carried - records[1]["output"]["loss"]) > 1e-4


@pytest.mark.parametrize("tbptt_steps, engine", PATHS)
def test_state_is_carried_across_windows(tbptt_steps, engine):
    # With update="sequence" the weights are fixed during the batch, and the forward values do not
    # depend on where the state is detached: every window loss and the batch loss are those of one
    # full-sequence forward pass.
    x, y = _batch(3)
    model = _model()
    before = copy.deepcopy(model)
    trainer = create_trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.5), nn.MSELoss(), tbptt_steps=tbptt_steps, execution=engine
    )
    window_losses = []  # CHUNK_COMPLETED: every window's loss on every path (fused-detached included)
    trainer.add_event_handler(TimeEvents.CHUNK_COMPLETED, lambda e: window_losses.extend(e.state.window_losses))
    trainer.run([(x, y)], max_epochs=1)
    with torch.no_grad():
        y_full, _ = before(x)
    assert trainer.state.output["loss"] == pytest.approx(F.mse_loss(y_full, y).item(), rel=1e-12)
    starts = range(0, T, tbptt_steps)
    assert len(window_losses) == len(starts)
    for start, got in zip(starts, window_losses):
        expected = F.mse_loss(y_full[:, start : start + tbptt_steps], y[:, start : start + tbptt_steps])
        assert got.item() == pytest.approx(expected.item(), rel=1e-12)
    if tbptt_steps < T:  # guard: restarting every window from zeros gives other losses
        with torch.no_grad():
            restarted = torch.cat([before(x[:, s : s + tbptt_steps])[0] for s in starts], dim=1)
        assert abs(F.mse_loss(restarted, y).item() - trainer.state.output["loss"]) > 1e-4


@pytest.mark.parametrize("tbptt_steps, engine", PATHS)
def test_state_is_detached_at_window_boundaries(tbptt_steps, engine):
    x, y = _batch(4)
    model = _model()
    before = copy.deepcopy(model)
    trainer = create_trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.5), nn.MSELoss(), tbptt_steps=tbptt_steps, execution=engine
    )
    trainer.run([(x, y)], max_epochs=1)
    got = _grads(model)
    _, truncated = _hand_loss_and_grads(before, x, y, window=tbptt_steps)
    _assert_grads_close(got, truncated, 1e-10)
    _, full = _hand_loss_and_grads(before, x, y, window=None)
    if tbptt_steps < T:
        assert _max_rel(got, full) > 1e-3  # the truncation is visible in the gradient
    else:
        _assert_grads_close(got, full, 1e-10)


class _GRUModel(nn.Module):
    """A model without ``step`` whose state is a bare tensor."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(F_IN, H, batch_first=True)
        self.head = nn.Linear(H, O)

    def forward(self, x, state=None):
        out, state = self.gru(x, state)
        return self.head(out), state


def test_a_model_without_step_and_a_tensor_state():
    # The stepwise path calls forward on length-1 sequences; the state is a bare tensor.
    x, y = _batch(5)
    torch.manual_seed(0)
    initial = _GRUModel().double()
    ref = copy.deepcopy(initial)  # reference: window by window with a detached carried state
    state, outputs = None, []
    for start in range(0, T, 4):
        y_w, state = ref(x[:, start : start + 4], state)
        outputs.append(y_w)
        state = state.detach()
    loss = F.mse_loss(torch.cat(outputs, dim=1), y)
    loss.backward()
    for engine in ("stepwise", "fused"):
        model = copy.deepcopy(initial)
        trainer = create_trainer(
            model, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss(), tbptt_steps=4, execution=engine
        )
        assert trainer.execution == engine
        trainer.run([(x, y)], max_epochs=1)
        assert trainer.state.output["loss"] == pytest.approx(loss.item(), rel=1e-12)
        _assert_grads_close(_grads(model), _grads(ref), 1e-10)


# (b) window events


@pytest.mark.parametrize(
    "tbptt_steps, update, engine, n_windows",
    [
        (4, "sequence", "stepwise", 3),
        (4, "sequence", "fused", 3),
        (3, "window", "fused", 4),
        (T, "window", "stepwise", 1),
        (1, "sequence", "stepwise", T),
    ],
)
def test_window_events_fire_per_window_and_count_globally(tbptt_steps, update, engine, n_windows):
    model = _model()
    trainer = create_trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.MSELoss(),
        tbptt_steps=tbptt_steps,
        update=update,
        execution=engine,
    )
    assert trainer.state.window_loss is None
    events, losses = [], []

    @trainer.on(TimeEvents.WINDOW_STARTED)
    def _started(e):
        events.append(("started", e.state.iteration, e.state.window))

    @trainer.on(TimeEvents.WINDOW_COMPLETED)
    def _completed(e):
        loss = e.state.window_loss
        assert loss.dim() == 0 and not loss.requires_grad
        losses.append(loss.item())
        events.append(("completed", e.state.iteration, e.state.window))

    @trainer.on(Events.ITERATION_COMPLETED)
    def _check_loss(e):
        # the batch loss is the step-weighted mean of this iteration's window losses
        sizes = [min(T, s + tbptt_steps) - s for s in range(0, T, tbptt_steps)]
        mine = losses[-n_windows:]
        assert e.state.output["loss"] == pytest.approx(sum(a * b for a, b in zip(mine, sizes)) / T, rel=1e-12)

    trainer.run([_batch(1), _batch(2)], max_epochs=2)
    expected = []
    for it in range(1, 5):
        for w in range(1, n_windows + 1):
            window = (it - 1) * n_windows + w
            expected += [("started", it, window), ("completed", it, window)]
    assert events == expected
    assert trainer.state.window == 4 * n_windows


@pytest.mark.parametrize(
    "tbptt_steps, engine, every, n_windows",
    [(4, "stepwise", 3, 3), (4, "fused", 5, 3), (3, "stepwise", 3, 4), (1, "stepwise", 3, T), (1, "stepwise", 7, T)],
)
def test_window_completed_every_filter(tbptt_steps, engine, every, n_windows):
    model = _model(num_layers=1)
    trainer = create_trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss(), tbptt_steps=tbptt_steps, execution=engine
    )
    fired = []
    trainer.add_event_handler(
        TimeEvents.WINDOW_COMPLETED(every=every), lambda e: fired.append((e.state.iteration, e.state.window))
    )
    trainer.run([_batch(1), _batch(2)], max_epochs=2)  # 4 iterations
    total = 4 * n_windows
    expected = [((w - 1) // n_windows + 1, w) for w in range(every, total + 1, every)]
    assert fired == expected
    assert len(fired) == total // every


def test_fused_detached_fires_chunk_events_only_around_real_computation():
    # fused-detached computes chunk_steps one-step windows in one call: no window event can
    # come before its window, so none is fired; CHUNK_COMPLETED carries the windows' losses.
    model = _model()
    trainer = create_trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss(), tbptt_steps=1, chunk_steps=4
    )
    assert trainer.state.execution == "fused-detached"
    windows, chunks = [], []
    trainer.add_event_handler(TimeEvents.WINDOW_STARTED, lambda e: windows.append(e.state.window))
    trainer.add_event_handler(TimeEvents.WINDOW_COMPLETED, lambda e: windows.append(e.state.window))
    trainer.add_event_handler(
        TimeEvents.CHUNK_COMPLETED, lambda e: chunks.append((e.state.iteration, e.state.window, e.state.window_losses))
    )
    trainer.run([_batch(1), _batch(2)], max_epochs=1)
    assert windows == []
    assert [(it, w, losses.shape) for it, w, losses in chunks] == [
        (1, 4, (4,)),
        (1, 8, (4,)),
        (1, T, (T - 8,)),
        (2, T + 4, (4,)),
        (2, T + 8, (4,)),
        (2, 2 * T, (T - 8,)),
    ]
    assert all(not losses.requires_grad for _, _, losses in chunks)
    assert trainer.state.window == 2 * T


def test_window_counter_survives_a_second_run_call():
    model = _model(num_layers=1)
    trainer = create_trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss(), tbptt_steps=4)
    windows = []
    trainer.add_event_handler(TimeEvents.WINDOW_COMPLETED, lambda e: windows.append(e.state.window))
    data = [_batch(1), _batch(2)]
    trainer.run(data, max_epochs=1)
    trainer.run(data, max_epochs=2)  # continues with epoch 2
    assert windows == list(range(1, 13))


# (c) optimizer steps per window or per batch


@pytest.mark.parametrize(
    "tbptt_steps, update, engine, per_batch",
    [
        (4, "window", "stepwise", 3),
        (4, "window", "fused", 3),
        (1, "window", "auto", T),
        (4, "sequence", "stepwise", 1),
        (4, "sequence", "fused", 1),
        (1, "sequence", "auto", 1),
    ],
)
def test_optimizer_steps_per_window_or_per_batch(tbptt_steps, update, engine, per_batch):
    model = _model(num_layers=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = []
    optimizer.register_step_post_hook(lambda opt, args, kwargs: steps.append(1))
    trainer = create_trainer(model, optimizer, nn.MSELoss(), tbptt_steps=tbptt_steps, update=update, execution=engine)
    steps_at_window = []
    trainer.add_event_handler(TimeEvents.WINDOW_COMPLETED, lambda e: steps_at_window.append(len(steps)))
    trainer.run([_batch(1), _batch(2)], max_epochs=2)
    assert len(steps) == 4 * per_batch
    if update == "window":  # the step of window w is taken before its WINDOW_COMPLETED
        assert steps_at_window == list(range(1, 4 * per_batch + 1))


def _clip_coef(norm, grad_clip):
    return 1.0 if grad_clip is None else min(1.0, grad_clip / (norm + 1e-6))


@pytest.mark.parametrize("engine", ["stepwise", "fused"])
@pytest.mark.parametrize("grad_clip", [None, 1e-2])
def test_update_window_is_sgd_on_each_window(engine, grad_clip):
    # The hand version: one SGD step per window on that window's mean loss, with the state
    # carried (detached) into the next window, which runs with the updated weights.
    x, y = _batch(6)
    model, lr, k = _model(), 0.3, 4
    ref = copy.deepcopy(model)
    trainer = create_trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=lr),
        nn.MSELoss(),
        tbptt_steps=k,
        update="window",
        grad_clip=grad_clip,
        execution=engine,
    )
    trainer.run([(x, y)], max_epochs=1)
    state, norm = None, None
    for start in range(0, T, k):
        ref.zero_grad()
        y_w, state = _hand_run(ref, x[:, start : start + k], state=state)
        F.mse_loss(y_w, y[:, start : start + k]).backward()
        with torch.no_grad():
            norm = torch.sqrt(sum((p.grad**2).sum() for p in ref.parameters())).item()
            coef = _clip_coef(norm, grad_clip)
            for p in ref.parameters():
                p -= lr * coef * p.grad
        state = ([h.detach() for h in state[0]], [c.detach() for c in state[1]])
    if grad_clip is not None:
        assert norm > grad_clip  # the clip was active
    assert trainer.state.output["grad_norm"] == pytest.approx(norm, rel=1e-10)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)


# (d) gradient clipping


@pytest.mark.parametrize("tbptt_steps, engine", [(4, "stepwise"), (4, "fused"), (1, "fused")])
@pytest.mark.parametrize("grad_clip", [None, 1e-2, 1e3])
def test_grad_clip(tbptt_steps, engine, grad_clip):
    x, y = _batch(7)
    model, lr = _model(), 0.3
    before = copy.deepcopy(model)
    trainer = create_trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=lr),
        nn.MSELoss(),
        tbptt_steps=tbptt_steps,
        grad_clip=grad_clip,
        execution=engine,
    )
    trainer.run([(x, y)], max_epochs=1)
    _, grads = _hand_loss_and_grads(before, x, y, window=tbptt_steps)
    norm = torch.sqrt(sum((g**2).sum() for g in grads.values())).item()
    assert 1e-2 < norm < 1e3  # so the two clips are one active and one inactive
    output = trainer.state.output
    assert set(output) == {"loss", "grad_norm"}
    assert isinstance(output["loss"], float) and isinstance(output["grad_norm"], float)
    assert output["grad_norm"] == pytest.approx(norm, rel=1e-10)  # the norm before clipping
    coef = _clip_coef(norm, grad_clip)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, before.get_parameter(name) - lr * coef * grads[name], rtol=0, atol=1e-12)
    clipped = torch.sqrt(sum((p.grad**2).sum() for p in model.parameters())).item()
    assert clipped == pytest.approx(norm * coef, rel=1e-10)
    if grad_clip is not None:
        assert clipped <= grad_clip


# (e) argument errors


def _trainer_args():
    model = _model(num_layers=1)
    return model, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss()


@pytest.mark.parametrize(
    "kwargs, error, msg",
    [
        ({"tbptt_steps": 0}, ValueError, "Argument tbptt_steps should be positive, got 0."),
        ({"tbptt_steps": 2.0}, TypeError, "Argument tbptt_steps should be an integer, got float."),
        ({"tbptt_steps": True}, TypeError, "Argument tbptt_steps should be an integer, got bool."),
        ({"chunk_steps": -5}, ValueError, "Argument chunk_steps should be positive, got -5."),
        ({"chunk_steps": "250"}, TypeError, "Argument chunk_steps should be an integer, got str."),
        ({"update": "batch"}, ValueError, "Argument update should be one of ('sequence', 'window'), got 'batch'."),
        ({"grad_clip": 0}, ValueError, "Argument grad_clip should be positive or None, got 0."),
        ({"grad_clip": -1.0}, ValueError, "Argument grad_clip should be positive or None, got -1.0."),
        ({"grad_clip": "1"}, TypeError, "Argument grad_clip should be a number or None, got str."),
        ({"grad_clip": True}, TypeError, "Argument grad_clip should be a number or None, got bool."),
        (
            {"execution": "gpu"},
            ValueError,
            "Argument execution should be one of ('auto', 'fused', 'stepwise'), got 'gpu'.",
        ),
        (
            {"gradient_accumulation_steps": 0},
            ValueError,
            "Argument gradient_accumulation_steps should be positive, got 0.",
        ),
        (
            {"gradient_accumulation_steps": 2, "update": "window"},
            ValueError,
            "Argument gradient_accumulation_steps should be 1 with update='window' (an optimizer step per window), got 2.",
        ),
        (
            {"amp_dtype": torch.float64},
            ValueError,
            "Argument amp_dtype should be None, torch.bfloat16 or torch.float16, got torch.float64.",
        ),
        (
            {"amp_dtype": "bf16"},
            ValueError,
            "Argument amp_dtype should be None, torch.bfloat16 or torch.float16, got 'bf16'.",
        ),
    ],
)
def test_create_trainer_argument_errors(kwargs, error, msg):
    with pytest.raises(error, match=re.escape(msg)):
        create_trainer(*_trainer_args(), **kwargs)


@pytest.mark.parametrize(
    "loss_fn, error, msg",
    [
        (
            nn.MSELoss(reduction="sum"),
            ValueError,
            "Argument loss_fn should be mean-reduced (the mean over (sequence, step) positions), got reduction='sum'.",
        ),
        (nn.L1Loss(reduction="none"), ValueError, "got reduction='none'."),
        ("mse", TypeError, "Argument loss_fn should be callable, got str."),
    ],
)
def test_create_trainer_refuses_a_loss_outside_the_contract(loss_fn, error, msg):
    model, optimizer, _ = _trainer_args()
    with pytest.raises(error, match=re.escape(msg)):
        create_trainer(model, optimizer, loss_fn)


def test_create_evaluator_argument_errors():
    msg = "Argument execution should be one of ('auto', 'fused', 'stepwise'), got 'fast'."
    with pytest.raises(ValueError, match=re.escape(msg)):
        create_evaluator(_model(), execution="fast")
    with pytest.raises(ValueError, match=re.escape(msg)):
        select_execution(_model(), nn.MSELoss(), 1, "sequence", execution="fast")


def test_the_engine_argument_is_a_deprecated_alias_of_execution():
    model = _model()
    with pytest.warns(DeprecationWarning, match="Argument engine is deprecated; use execution="):
        trainer = create_trainer(
            model, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss(), tbptt_steps=4, engine="stepwise"
        )
    assert trainer.state.execution == trainer.execution == "stepwise"
    with pytest.warns(DeprecationWarning):
        assert select_execution(model, nn.MSELoss(), 4, "sequence", engine="stepwise") == "stepwise"


# (f) evaluator


@pytest.mark.parametrize("engine", ["auto", "fused", "stepwise"])
def test_evaluator_metrics_see_every_step_once(engine):
    # Batches of different sizes: a metric that weighted batches instead of steps would disagree.
    model = _model(dropout=0.3)  # evaluation must switch dropout off
    data = [_batch(1, batch=3), _batch(2, batch=1), _batch(3, batch=2)]
    evaluator = create_evaluator(model, {"mse": MeanSquaredError(), "mae": MeanAbsoluteError()}, execution=engine)
    metrics = evaluator.run(data).metrics
    model.eval()
    with torch.no_grad():
        pred = np.concatenate([model(x)[0].numpy().ravel() for x, _ in data])  # each sequence from zeros
    true = np.concatenate([y.numpy().ravel() for _, y in data])
    assert pred.size == (3 + 1 + 2) * T
    # Ignite's MSE/MAE accumulate their sums in float32: hence 1e-6
    assert metrics["mse"] == pytest.approx(np.mean((pred - true) ** 2), rel=1e-6)
    assert metrics["mae"] == pytest.approx(np.mean(np.abs(pred - true)), rel=1e-6)


def test_evaluator_output_and_stepwise_equals_fused():
    model = _model(num_layers=3, output_size=2)
    x, y = _batch(8, output_size=2)
    outputs = {}
    for engine in ("stepwise", "fused"):
        evaluator = create_evaluator(model, execution=engine)
        outputs[engine] = evaluator.run([(x, y)]).output
    out = outputs["fused"]
    assert set(out) == {"y_pred", "y", "x"}  # without a mask every row counts
    assert out["y_pred"].shape == (B * T, 2) and out["y"].shape == (B * T, 2) and out["x"].shape == (B * T, F_IN)
    assert not out["y_pred"].requires_grad
    # row b * T + t is step t of sequence b
    assert torch.equal(out["x"][1 * T + 4], x[1, 4]) and torch.equal(out["y"][2 * T + 9], y[2, 9])
    torch.testing.assert_close(out["y_pred"], model(x)[0].reshape(-1, 2), rtol=0, atol=1e-12)
    torch.testing.assert_close(outputs["stepwise"]["y_pred"], out["y_pred"], rtol=0, atol=1e-12)


# (g) execution path


class _NotAnLSTM(nn.Module):
    def forward(self, x, state=None):
        return x, state


@pytest.mark.parametrize(
    "model, loss_fn, tbptt_steps, update, engine, expected",
    [
        ("lstm", nn.MSELoss(), 1, "sequence", "auto", "fused-detached"),
        ("lstm", nn.MSELoss(), 1, "sequence", "fused", "fused-detached"),
        ("lstm", nn.MSELoss(), 1, "sequence", "stepwise", "stepwise"),
        ("lstm", nn.L1Loss(), 1, "sequence", "auto", "fused-detached"),
        ("lstm", nn.HuberLoss(delta=0.5), 1, "sequence", "auto", "fused-detached"),
        ("lstm", nn.SmoothL1Loss(beta=0.5), 1, "sequence", "auto", "fused-detached"),
        ("lstm", F.mse_loss, 1, "sequence", "auto", "fused-detached"),  # any loss keeps the fast path
        ("lstm", lambda a, b: ((a - b) ** 4).mean(), 1, "sequence", "auto", "fused-detached"),
        ("lstm", nn.MSELoss(), 1, "window", "auto", "stepwise"),
        ("lstm", nn.MSELoss(), 1, "window", "fused", "fused"),
        ("lstm", nn.MSELoss(), 1, "window", "stepwise", "stepwise"),
        ("lstm", nn.MSELoss(), 7, "sequence", "auto", "fused"),
        ("lstm", nn.MSELoss(), 7, "window", "auto", "fused"),
        ("lstm", nn.MSELoss(), 7, "sequence", "fused", "fused"),
        ("lstm", nn.MSELoss(), 7, "sequence", "stepwise", "stepwise"),
        ("other", nn.MSELoss(), 1, "sequence", "auto", "stepwise"),
        ("other", nn.MSELoss(), 1, "sequence", "fused", "fused"),
        ("other", nn.MSELoss(), 7, "window", "auto", "fused"),
    ],
)
def test_select_execution(model, loss_fn, tbptt_steps, update, engine, expected):
    net = _model(num_layers=1) if model == "lstm" else _NotAnLSTM()
    assert select_execution(net, loss_fn, tbptt_steps, update, engine) == expected
    if model == "lstm":
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        trainer = create_trainer(net, optimizer, loss_fn, tbptt_steps=tbptt_steps, update=update, execution=engine)
        assert trainer.execution == expected


# (h) device, the epoch loss


def test_device_moves_the_model_and_refuses_a_move_that_would_leave_the_optimizer_behind():
    # "meta" is a device of every machine; torch moves parameters there as new objects
    model = _model()
    create_evaluator(model, device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())
    model = _model()
    msg = (
        "Argument device is 'meta': moving the model there replaced its parameters, so the optimizer built on "
        "them would not train it; move the model first (model.to(device)), then create the optimizer."
    )
    with pytest.raises(ValueError, match=re.escape(msg)):
        create_trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss(), device="meta")
    model = _model()
    params = list(model.parameters())
    create_trainer(model, torch.optim.SGD(params, lr=0.1), nn.MSELoss(), device="cpu")
    assert all(a is b for a, b in zip(params, model.parameters()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_cpu_model_trains_on_the_gpu_given_device_cuda():
    model = _model()
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    trainer = create_trainer(model, optimizer, nn.MSELoss(), tbptt_steps=4, device="cuda")
    trainer.run([_batch(1)], max_epochs=2)
    assert next(model.parameters()).is_cuda and all(s["exp_avg"].is_cuda for s in optimizer.state.values())
    metrics = create_evaluator(model, {"mse": MeanSquaredError()}, device="cuda").run([_batch(2)]).metrics
    assert metrics["mse"] > 0


def test_a_factory_trainer_has_the_epoch_loss_that_attach_tensorboard_logs(tmp_path):
    import warnings

    from ignite_lstm.handlers.common import attach_tensorboard

    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = create_trainer(model, optimizer, nn.MSELoss(), tbptt_steps=4)
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Ignite warns when a logged metric is missing
        attach_tensorboard(trainer, create_evaluator(model), optimizer, tmp_path / "tb")
        trainer.run([_batch(1), _batch(2)], max_epochs=1)
    assert trainer.state.metrics["epoch_loss"] == pytest.approx(sum(losses) / 2, rel=1e-12)


def test_set_tbptt_steps_changes_the_window_and_the_path_of_the_next_batches_exactly():
    # Epoch 1 at K = 1 (fused-detached), epoch 2 at K = 5 (fused): the parameters of a trainer made
    # with each K in turn, on the same model and optimizer.
    base, data, loss = _model(), [_batch(1), _batch(2)], nn.MSELoss()
    switched = copy.deepcopy(base)
    optimizer = torch.optim.Adam(switched.parameters(), lr=0.05)
    trainer = create_trainer(switched, optimizer, loss, tbptt_steps=1)
    assert (trainer.state.execution, trainer.state.tbptt_steps) == ("fused-detached", 1)
    paths = []
    trainer.add_event_handler(Events.EPOCH_STARTED(once=2), lambda e: paths.append(set_tbptt_steps(e, 5)))
    trainer.run(data, max_epochs=2)
    assert paths == ["fused"] and (trainer.state.execution, trainer.state.tbptt_steps) == ("fused", 5)
    assert trainer.state.window == 2 * T + 2 * 2  # 10 one-step windows per batch, then 2 of 5 steps

    made = copy.deepcopy(base)
    optimizer = torch.optim.Adam(made.parameters(), lr=0.05)
    create_trainer(made, optimizer, loss, tbptt_steps=1).run(data, max_epochs=1)
    create_trainer(made, optimizer, loss, tbptt_steps=5).run(data, max_epochs=1)
    for (name, a), b in zip(switched.named_parameters(), made.parameters()):
        assert torch.equal(a, b), name
    assert not torch.equal(next(switched.parameters()), next(base.parameters()))


def test_set_tbptt_steps_keeps_the_execution_request_and_refuses_what_it_cannot_do():
    model = _model()
    trainer = create_trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss(), tbptt_steps=1, execution="stepwise"
    )
    assert set_tbptt_steps(trainer, 4) == "stepwise" and trainer.state.tbptt_steps == 4
    with pytest.raises(ValueError, match=re.escape("Argument tbptt_steps should be positive, got 0.")):
        set_tbptt_steps(trainer, 0)
    with pytest.raises(ValueError, match="Argument trainer should be an Engine made by create_trainer."):
        set_tbptt_steps(Engine(lambda e, b: None), 4)
    trainer.add_event_handler(TimeEvents.WINDOW_STARTED(once=2), lambda e: set_tbptt_steps(e, 2))
    with pytest.raises(RuntimeError, match="The trainer's window length cannot change inside an iteration"):
        trainer.run([_batch(1)], max_epochs=1)
    assert trainer.state.tbptt_steps == 4
