import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from ignite.engine import Events

from ignite_lstm.engine.factories import TimeEvents, create_trainer
from ignite_lstm.engine.losses import elementwise_loss
from ignite_lstm.models.detached import detached_steps_forward
from ignite_lstm.models.lstm import StatefulLSTM

B, T, F_IN, H, O = 2, 10, 3, 4, 1
CHUNK = 4  # < T, and not a divisor of T: chunks of 4, 4, 2 carry the state
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def _model(num_layers, dtype=torch.float64, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    return StatefulLSTM(F_IN, H, num_layers=num_layers, dropout=dropout, output_size=O).to(dtype)


def _batches(n, dtype=torch.float64, seed=0, batch=B):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(batch, T, F_IN, generator=gen, dtype=torch.float64)
        y = torch.randn(batch, T, O, generator=gen, dtype=torch.float64)
        out.append((x.to(dtype), y.to(dtype)))
    return out


def _rel(a, b):
    """||a - b|| / ||b||; 0 when equal (gradients that are exactly zero in both, e.g. W_hh at t = 0)."""
    diff = (a - b).norm()
    return 0.0 if diff == 0 else (diff / b.norm()).item()


def _rel_all(a, b):
    """The relative error of a whole gradient: all parameter tensors as one vector.

    Per tensor is too strict in float32: the output bias's gradient is a sum of residuals that
    nearly cancel (|sum| << sum |terms|), so its own relative rounding error exceeds 1e-5.
    """
    return _rel(torch.cat([t.flatten() for t in a]), torch.cat([t.flatten() for t in b]))


def _cell(x, h, c, lstm):
    """One LSTM cell step written out from the weights (independent of the package's code)."""
    gates = x @ lstm.weight_ih_l0.T + lstm.bias_ih_l0 + h @ lstm.weight_hh_l0.T + lstm.bias_hh_l0
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _detached_loop(model, x, state, masks=None):
    """The literal L = 1 loop: state detached before every step; masks[i] (B, T, H) scale layer i's input."""
    hs, cs = list(state[0]), list(state[1])
    outputs = []
    for t in range(x.shape[1]):
        hs, cs = [h.detach() for h in hs], [c.detach() for c in cs]
        inp = x[:, t]
        for i, lstm in enumerate(model.layers):
            if masks is not None and i > 0:
                inp = inp * masks[i][:, t]
            hs[i], cs[i] = _cell(inp, hs[i], cs[i], lstm)
            inp = hs[i]
        outputs.append(model.head(inp))
    return torch.stack(outputs, dim=1), (torch.stack(hs), torch.stack(cs))


def _train(engine, num_layers, tbptt_steps, update, dtype, optimizer, n_batches):
    """Batches through a trainer; returns everything the two paths must agree on."""
    model = _model(num_layers, dtype)
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
    trainer = create_trainer(
        model, opt, nn.MSELoss(), tbptt_steps=tbptt_steps, update=update, execution=engine, chunk_steps=CHUNK
    )
    rec = {"execution": trainer.execution, "loss": [], "window_loss": [], "grads": []}

    def snapshot(e):
        rec["grads"].append([p.grad.clone() for p in model.parameters()])

    # CHUNK_COMPLETED carries every window's loss on every path (one per chunk on fused-detached)
    trainer.add_event_handler(TimeEvents.CHUNK_COMPLETED, lambda e: rec["window_loss"].extend(e.state.window_losses))
    # update="window": one optimizer step per window, so compare every window's gradient
    trainer.add_event_handler(
        TimeEvents.WINDOW_COMPLETED if update == "window" else Events.ITERATION_COMPLETED, snapshot
    )
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: rec["loss"].append(e.state.output["loss"]))
    trainer.run(_batches(n_batches, dtype), max_epochs=1)
    rec["params"] = [p.detach().clone() for p in model.parameters()]
    return rec


@pytest.mark.parametrize("update", ["sequence", "window"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("tbptt_steps", [1, 7, T])
def test_fused_equals_stepwise(tbptt_steps, num_layers, update):
    n_windows = -(-T // tbptt_steps)
    # at least three optimizer steps: three batches, or fewer when every window is a step
    n_batches = 3 if update == "sequence" else -(-3 // n_windows)
    n_steps = n_batches * (n_windows if update == "window" else 1)
    # float32 with Adam only: it is the stricter of the two optimizers for rounding (it divides by
    # sqrt(v)), and dropping float32 + SGD keeps the grid inside the test time budget
    for dtype, optimizer in ((torch.float64, "sgd"), (torch.float64, "adam"), (torch.float32, "adam")):
        tol = TOL[dtype]
        fused = _train("fused", num_layers, tbptt_steps, update, dtype, optimizer, n_batches)
        stepwise = _train("stepwise", num_layers, tbptt_steps, update, dtype, optimizer, n_batches)
        expected = "fused-detached" if (tbptt_steps, update) == (1, "sequence") else "fused"
        assert fused["execution"] == expected and stepwise["execution"] == "stepwise"
        assert len(fused["loss"]) == len(stepwise["loss"]) == n_batches
        for a, b in zip(fused["loss"], stepwise["loss"]):
            assert abs(a - b) <= tol * abs(b)
        assert len(fused["window_loss"]) == len(stepwise["window_loss"]) == n_batches * n_windows
        for a, b in zip(fused["window_loss"], stepwise["window_loss"]):
            assert abs(a - b).item() <= tol * abs(b).item()
        assert len(fused["grads"]) == len(stepwise["grads"]) == n_steps >= 3
        for ga, gb in zip(fused["grads"], stepwise["grads"]):
            assert _rel_all(ga, gb) <= tol
        for a, b in zip(fused["params"], stepwise["params"]):
            assert _rel(a, b) <= tol


@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_detached_steps_forward_values_state_and_gradient(num_layers):
    model = _model(num_layers)
    ((x, y),) = _batches(1, seed=5)
    gen = torch.Generator().manual_seed(6)
    state = tuple(torch.randn(num_layers, B, H, generator=gen, dtype=torch.float64) for _ in range(2))

    # values: detaching changes gradients only
    y_ref, (h_ref, c_ref) = model(x, state)
    y_det, (h_det, c_det) = model(x, state, detach_every_step=True)
    torch.testing.assert_close(y_det, y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(h_det, h_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(c_det, c_ref, rtol=0, atol=1e-12)
    assert not h_det.requires_grad and not c_det.requires_grad

    # gradient: chunks carrying the state equal the literal loop over all T steps
    model.zero_grad()
    carried, outputs = state, []
    for start in range(0, T, CHUNK):
        y_c, carried = detached_steps_forward(
            model.layers, model.head, x[:, start : start + CHUNK], *carried, [None] * num_layers
        )
        outputs.append(y_c)
    F.mse_loss(torch.cat(outputs, dim=1), y).backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    y_loop, (h_loop, c_loop) = _detached_loop(model, x, state)
    F.mse_loss(y_loop, y).backward()
    for a, p in zip(got, model.parameters()):
        assert _rel(a, p.grad) <= 1e-12
    torch.testing.assert_close(carried[0], h_loop, rtol=0, atol=1e-12)
    torch.testing.assert_close(carried[1], c_loop, rtol=0, atol=1e-12)


def test_detached_steps_forward_in_eval_mode_ignores_dropout():
    model = _model(num_layers=3, dropout=0.3).eval()
    ((x, y),) = _batches(1, seed=7)
    y_det, _ = model(x, detach_every_step=True)
    F.mse_loss(y_det, y).backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    y_loop, _ = _detached_loop(model, x, model.init_state(B))
    F.mse_loss(y_loop, y).backward()
    torch.testing.assert_close(y_det, model(x)[0], rtol=0, atol=1e-12)
    for a, p in zip(got, model.parameters()):
        assert _rel(a, p.grad) <= 1e-12


@pytest.mark.parametrize("num_layers", [2, 3])
def test_dropout_paths_differ_only_by_their_masks(num_layers, monkeypatch):
    # Design: a statistical comparison of random-mask runs can pass or fail by luck, so we
    # compare the two paths exactly with the *same* masks instead. The fused-detached path draws
    # one mask per layer > 0 and chunk with torch.bernoulli; we record the masks it actually used
    # (the real draws, not a reimplementation of its RNG use). The stepwise path drops out with
    # F.dropout per step; we replace F.dropout by a replay of the recorded masks at (step t,
    # layer i). If the fused path applied different masks in its no-graph pass and its gradient
    # pass, or misaligned them in time or batch, loss or gradients would differ.
    p = 0.3
    keep = 1.0 - p
    batch = 3  # never a chunk length (4, 4, 2): tells a (B, C, H) mask from a time-major (C, B, H) one
    ((x, y),) = _batches(1, seed=8, batch=batch)
    model = _model(num_layers, dropout=p)
    initial = copy.deepcopy(model)

    drawn = []
    real_bernoulli = torch.bernoulli

    def recording_bernoulli(probs, *args, **kwargs):
        mask = real_bernoulli(probs, *args, **kwargs)
        drawn.append(mask.clone())
        return mask

    monkeypatch.setattr(torch, "bernoulli", recording_bernoulli)
    torch.manual_seed(123)
    fused = create_trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss(), chunk_steps=CHUNK)
    assert fused.execution == "fused-detached"
    fused.run([(x, y)], max_epochs=1)
    monkeypatch.setattr(torch, "bernoulli", real_bernoulli)

    # one draw per chunk and layer > 0, in that order; reassemble (B, T, H) per layer
    n_chunks = -(-T // CHUNK)
    assert len(drawn) == n_chunks * (num_layers - 1)
    drawn = [m if m.shape[0] == batch else m.transpose(0, 1) for m in drawn]
    masks = [None] + [
        torch.cat([drawn[k * (num_layers - 1) + i - 1] for k in range(n_chunks)], dim=1) / keep
        for i in range(1, num_layers)
    ]
    for m in masks[1:]:
        assert m.shape == (batch, T, H)
        assert set(m.unique().tolist()) == {0.0, 1.0 / keep}  # dropout really dropped something here

    calls = []

    def replay_dropout(inp, p_arg=0.5, training=True, inplace=False):
        assert p_arg == p and training and inp.shape == (batch, H)
        t, layer = divmod(len(calls), num_layers - 1)
        calls.append((t, layer + 1))
        return inp * masks[layer + 1][:, t]

    stepwise_model = copy.deepcopy(initial)
    monkeypatch.setattr(F, "dropout", replay_dropout)
    stepwise = create_trainer(
        stepwise_model, torch.optim.SGD(stepwise_model.parameters(), lr=0.1), nn.MSELoss(), execution="stepwise"
    )
    stepwise.run([(x, y)], max_epochs=1)
    monkeypatch.undo()
    assert len(calls) == T * (num_layers - 1)

    assert fused.state.output["loss"] == pytest.approx(stepwise.state.output["loss"], rel=1e-12)
    assert fused.state.output["grad_norm"] == pytest.approx(stepwise.state.output["grad_norm"], rel=1e-10)
    for a, b in zip(model.parameters(), stepwise_model.parameters()):
        assert _rel(a.grad, b.grad) <= 1e-10
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)

    # the same check against the independent loop with the same masks
    ref = copy.deepcopy(initial)
    F.mse_loss(_detached_loop(ref, x, ref.init_state(batch), masks)[0], y).backward()
    for a, b in zip(model.parameters(), ref.parameters()):
        assert _rel(a.grad, b.grad) <= 1e-10
    # guard: the masks matter (without them the gradient is another one)
    ref.zero_grad()
    F.mse_loss(_detached_loop(ref, x, ref.init_state(batch))[0], y).backward()
    assert max(_rel(a.grad, b.grad) for a, b in zip(model.parameters(), ref.parameters())) > 1e-3


@pytest.mark.parametrize(
    "loss_fn", [nn.MSELoss(), nn.L1Loss(), nn.SmoothL1Loss(beta=0.5), nn.HuberLoss(delta=0.5)], ids=type
)
def test_elementwise_loss_is_the_unreduced_form(loss_fn):
    gen = torch.Generator().manual_seed(9)
    a, b = torch.randn(2, 2, 5, 3, generator=gen, dtype=torch.float64)
    per_element = elementwise_loss(loss_fn)(a, b)
    assert per_element.shape == a.shape
    assert per_element.mean().item() == pytest.approx(loss_fn(a, b).item(), rel=1e-14)
    # a robust loss and its parameter: some elements must fall in each regime for this to check it
    if not isinstance(loss_fn, (nn.MSELoss, nn.L1Loss)):
        diff = (a - b).abs()
        assert (diff < 0.5).any() and (diff > 0.5).any()


class _MyMSE(nn.MSELoss):
    pass


@pytest.mark.parametrize(
    "loss_fn", [nn.MSELoss(reduction="sum"), nn.L1Loss(reduction="none"), F.mse_loss, _MyMSE(), nn.BCELoss()]
)
def test_elementwise_loss_refuses_other_losses(loss_fn):
    assert elementwise_loss(loss_fn) is None


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_default_chunks_are_sized_by_the_model_and_give_the_per_step_numbers(dtype):
    """Without chunk_steps the model sizes the chunks (``detached_chunk_steps``: here at most 3 steps of the
    batch fit its budget), cut evenly (10 steps: 3, 3, 3, 1); loss, per-step losses, gradients and weights are
    those of the per-step loop."""
    model = _model(2, dtype)
    per_step = B * torch.empty((), dtype=dtype).element_size() * ((2 * 6 + 2) * H + F_IN + O)
    model.detached_chunk_bytes = 3 * per_step + per_step // 2  # 3.5 steps: at most 3
    assert model.detached_chunk_steps(B, torch.empty((), dtype=dtype).element_size()) == 3
    stepwise_model = copy.deepcopy(model)
    batches = _batches(2, dtype)
    fused = create_trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss())
    sizes = []
    fused.add_event_handler(TimeEvents.CHUNK_COMPLETED, lambda e: sizes.append(len(e.state.window_losses)))
    fused.run(batches, max_epochs=1)
    assert fused.execution == "fused-detached" and sizes == [3, 3, 3, 1] * 2
    stepwise = create_trainer(
        stepwise_model, torch.optim.SGD(stepwise_model.parameters(), lr=0.1), nn.MSELoss(), execution="stepwise"
    )
    stepwise.run(batches, max_epochs=1)
    tol = TOL[dtype]
    assert fused.state.output["loss"] == pytest.approx(stepwise.state.output["loss"], rel=tol)
    assert _rel_all([p.grad for p in model.parameters()], [p.grad for p in stepwise_model.parameters()]) <= tol
    for a, b in zip(model.parameters(), stepwise_model.parameters()):
        assert _rel(a, b) <= tol


def test_chunk_length_cuts_the_batch_evenly_within_the_models_size():
    from ignite_lstm.engine.updates import DEFAULT_CHUNK_STEPS, chunk_length

    model = StatefulLSTM(5, 64, num_layers=2)
    most = model.detached_chunk_steps(40, 4)
    assert most == 64 * 2**20 // (40 * 4 * ((2 * 6 + 2) * 64 + 5 + 1)) == 465
    assert chunk_length(model, 2000, 40, 4) == 400  # 5 chunks of 400, not 4 of 465 and one of 140
    assert chunk_length(model, most, 40, 4) == most  # one chunk
    assert chunk_length(model, 2000, 8, 4) == 2000  # a small batch: one chunk
    assert model.detached_chunk_steps(8, 4) >= 5 * most  # the same bytes per chunk
    assert chunk_length(nn.Linear(2, 2), 1000, 40, 4) == DEFAULT_CHUNK_STEPS  # a model that does not size them
    assert chunk_length(nn.Linear(2, 2), 260, 40, 4) == 130  # two even chunks, not 250 and 10
