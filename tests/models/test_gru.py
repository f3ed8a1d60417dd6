"""StatefulGRU and the native GRU kernel against a per-step GRU loop written out from the weights (float64)."""

import pytest
import torch
import torch.nn as nn
from ignite.engine import Events

from ignite_lstm.engine.factories import create_trainer
from ignite_lstm.models import native
from ignite_lstm.models.gru import StatefulGRU
from ignite_lstm.models.native.gru import gru_layer

pytestmark = pytest.mark.skipif(not native.available(), reason="native kernel not built (no C++ compiler)")

B, T, F_IN, H, O = 3, 9, 3, 5, 2


def _cell(x, h, gru):
    """One GRU step from the weights (PyTorch's equations, independent of the package's code)."""
    gi = x @ gru.weight_ih_l0.T + gru.bias_ih_l0
    gh = h @ gru.weight_hh_l0.T + gru.bias_hh_l0
    i_r, i_z, i_n = gi.chunk(3, dim=-1)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)
    r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return (1 - z) * n + z * h


def _loop(model, x, h0, detach_every_step):
    """The per-step loop: y (B, T, O) and the final state; detached before every step when asked."""
    hs, outputs = list(h0), []
    for t in range(x.shape[1]):
        if detach_every_step:
            hs = [h.detach() for h in hs]
        inp = x[:, t]
        for i, gru in enumerate(model.layers):
            hs[i] = _cell(inp, hs[i], gru)
            inp = hs[i]
        outputs.append(model.head(inp))
    h = torch.stack(hs)
    return torch.stack(outputs, dim=1), (h.detach() if detach_every_step else h)  # the carried state, detached


def _model(num_layers, dtype=torch.float64, hidden=H):
    torch.manual_seed(0)
    return StatefulGRU(F_IN, hidden, num_layers=num_layers, output_size=O).to(dtype)


def _data(dtype=torch.float64, batch=B, steps=T):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, steps, F_IN, generator=gen, dtype=torch.float64).to(dtype)
    return x


def _grads(model, x, h0, run):
    model.zero_grad()
    x = x.clone().requires_grad_(True)
    h0 = h0.clone().requires_grad_(True)
    y, h = run(x, h0)
    loss = (y**2).sum() + 0.3 * (h**2).sum() if h.requires_grad else (y**2).sum()
    loss.backward()
    return y.detach(), h.detach(), [p.grad.clone() for p in model.parameters()], x.grad, h0.grad


def _rel(a, b):
    diff = (a - b).norm()
    return 0.0 if diff == 0 else (diff / b.norm()).item()


@pytest.mark.parametrize("detach", [False, True], ids=["through-time", "detached"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_forward_and_gradients_equal_the_per_step_loop(num_layers, detach):
    model = _model(num_layers)
    x = _data()
    h0 = 0.5 * torch.randn(num_layers, B, H, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    got = _grads(model, x, h0, lambda x, h: model(x, h, detach_every_step=detach))
    want = _grads(model, x, h0, lambda x, h: _loop(model, x, h, detach))
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-13)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=1e-13)
    for a, b in zip(got[2] + [got[3]], want[2] + [want[3]]):
        assert _rel(a, b) <= 1e-12
    if detach:  # the state detached before every step: nothing reaches the initial state
        assert got[4] is None or got[4].abs().max() == 0
    else:
        assert _rel(got[4], want[4]) <= 1e-12


def test_inference_and_step_equal_the_per_step_loop():
    model = _model(2).eval()
    x = _data(batch=6, steps=20)
    h0 = 0.5 * torch.randn(2, 6, H, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        y_ref, h_ref = _loop(model, x, h0, False)
        y, h = model(x, h0)
        torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-13)
        torch.testing.assert_close(h, h_ref, rtol=0, atol=1e-13)
        s, outs = h0, []
        for t in range(x.shape[1]):
            y_t, s = model.step(x[:, t], s)
            outs.append(y_t)
        torch.testing.assert_close(torch.stack(outs, 1), y_ref, rtol=0, atol=1e-13)
        torch.testing.assert_close(s, h_ref, rtol=0, atol=1e-13)


def test_pytorch_fallback_equals_the_kernel():
    model = _model(2)
    x = _data()
    h0 = model.init_state(B)
    for detach in (False, True):

        def run(x, h, detach=detach):
            return model(x, h, detach_every_step=detach)

        got = _grads(model, x, h0, run)
        with native.disabled():
            want = _grads(model, x, h0, run)
        torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-13)
        for a, b in zip(got[2], want[2]):
            assert _rel(a, b) <= 1e-12


@pytest.mark.parametrize("hidden", [5, 37, 64])  # vector tails of the 16-wide products and none
def test_float32_within_rounding(hidden):
    model = _model(2, torch.float32, hidden=hidden)
    x = _data(torch.float32, batch=7, steps=30)
    h0 = model.init_state(7)
    got = _grads(model, x, h0, lambda x, h: model(x, h))
    with native.disabled():
        want = _grads(model, x, h0, lambda x, h: model(x, h))
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
    assert _rel(torch.cat([g.flatten() for g in got[2]]), torch.cat([g.flatten() for g in want[2]])) <= 1e-5


def test_gru_layer_matches_nn_gru_directly():
    torch.manual_seed(3)
    gru = nn.GRU(4, 6).double()
    x = torch.randn(11, 3, 4, dtype=torch.float64)
    h0 = torch.randn(3, 6, dtype=torch.float64)
    hs, h = gru_layer(x, h0, *gru.parameters())
    ref, h_ref = gru(x, h0[None])
    torch.testing.assert_close(hs, ref, rtol=0, atol=1e-14)
    torch.testing.assert_close(h, h_ref[0], rtol=0, atol=1e-14)


def _train(execution, dtype):
    model = _model(2, dtype)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    trainer = create_trainer(
        model, opt, nn.MSELoss(), tbptt_steps=1, update="sequence", execution=execution, chunk_steps=4
    )
    gen = torch.Generator().manual_seed(4)
    batches = [
        (torch.randn(B, 10, F_IN, generator=gen, dtype=dtype), torch.randn(B, 10, O, generator=gen, dtype=dtype))
        for _ in range(3)
    ]
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"]))
    trainer.run(batches, max_epochs=1)
    return trainer.execution, losses, [p.detach().clone() for p in model.parameters()]


def test_trainer_fused_detached_equals_the_per_step_loop():
    fused, stepwise = _train("fused", torch.float64), _train("stepwise", torch.float64)
    assert fused[0] == "fused-detached" and stepwise[0] == "stepwise"
    for a, b in zip(fused[1], stepwise[1]):
        assert abs(a - b) <= 1e-10 * abs(b)
    for a, b in zip(fused[2], stepwise[2]):
        assert _rel(a, b) <= 1e-10


def test_arguments_are_checked():
    with pytest.raises(TypeError, match="hidden_size should be an integer"):
        StatefulGRU(3, 2.5)
    with pytest.raises(ValueError, match="dropout should be in"):
        StatefulGRU(3, 4, dropout=1.0)
    with pytest.raises(ValueError, match="x_t should be a"):
        StatefulGRU(3, 4).step(torch.zeros(2, 1, 3))
