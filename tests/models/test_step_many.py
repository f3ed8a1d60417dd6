"""native.step_many: many lanes' next step in one call, against nn.LSTM stepped lane by lane."""

import pytest
import torch
import torch.nn as nn

from ignite_lstm.models import native
from ignite_lstm.models.lstm import StatefulLSTM


def _model(dtype=torch.float64, layers=2, hidden=20, inputs=3, outputs=2, dropout=0.0):
    torch.manual_seed(0)
    return StatefulLSTM(inputs, hidden, num_layers=layers, dropout=dropout, output_size=outputs).to(dtype).eval()


def _reference_step(model, x_t, h, c):
    """One step of one lane (x_t (F,), h, c (L, H)) through each layer's own nn.LSTM on a length-1 sequence."""
    inp = x_t[None, None]  # (batch 1, 1 step, F)
    hs, cs = [], []
    for i, lstm in enumerate(model.layers):
        assert isinstance(lstm, nn.LSTM)
        inp, (h_i, c_i) = lstm(inp, (h[i][None, None], c[i][None, None]))
        hs.append(h_i[0, 0])
        cs.append(c_i[0, 0])
    return model.head(inp[0, 0]), torch.stack(hs), torch.stack(cs)


@pytest.mark.parametrize("lanes", [1, 7, 45])  # 45: a split between two threads (16 lanes or more each)
def test_lanes_equal_nn_lstm_stepped_lane_by_lane_in_float64(lanes):
    model = _model()
    gen = torch.Generator().manual_seed(1)
    xs = torch.randn(4, lanes, 3, generator=gen, dtype=torch.float64)
    h = 0.5 * torch.randn(2, lanes, 20, generator=gen, dtype=torch.float64)
    c = 0.5 * torch.randn(2, lanes, 20, generator=gen, dtype=torch.float64)
    state = (h, c)
    ref = [(h[:, n], c[:, n]) for n in range(lanes)]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for t in range(4):  # several steps: the returned state carries each lane exactly
            y, state = native.step_many(model, xs[t], state)
            with torch.no_grad():
                for n in range(lanes):
                    y_ref, h_ref, c_ref = _reference_step(model, xs[t, n], *ref[n])
                    ref[n] = (h_ref, c_ref)
                    torch.testing.assert_close(y[n], y_ref, rtol=0, atol=1e-13)
                    torch.testing.assert_close(state[0][:, n], h_ref, rtol=0, atol=1e-13)
                    torch.testing.assert_close(state[1][:, n], c_ref, rtol=0, atol=1e-13)
    finally:
        torch.set_num_threads(before)


def test_float32_within_rounding_and_the_thread_split_keeps_the_bits():
    model = _model(torch.float32, hidden=64)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(300, 3, generator=gen)
    state = tuple(0.5 * torch.randn(2, 300, 64, generator=gen) for _ in range(2))
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(native.step_many(model, x, state))
    finally:
        torch.set_num_threads(before)
    (y1, (h1, c1)), (y2, (h2, c2)) = results
    assert torch.equal(y1, y2) and torch.equal(h1, h2) and torch.equal(c1, c2)
    with torch.no_grad(), native.disabled():
        y_ref, (h_ref, c_ref) = model.step(x, state)
    for a, b in ((y1, y_ref), (h1, h_ref), (c1, c_ref)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_state_none_starts_every_lane_from_zeros_and_inputs_are_kept():
    model = _model()
    x = torch.randn(5, 3, dtype=torch.float64)
    copy = x.clone()
    y, state = native.step_many(model, x, None)
    y_zero, state_zero = native.step_many(model, x, model.init_state(5, dtype=torch.float64))
    assert torch.equal(y, y_zero) and torch.equal(state[0], state_zero[0])
    assert torch.equal(x, copy)


def test_without_the_kernel_model_step_gives_the_same_numbers():
    model = _model()
    x = torch.randn(6, 3, dtype=torch.float64)
    state = model.init_state(6, dtype=torch.float64)
    y, (h, c) = native.step_many(model, x, state)
    with native.disabled():
        y_ref, (h_ref, c_ref) = native.step_many(model, x, state)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-13)
    torch.testing.assert_close(h, h_ref, rtol=0, atol=1e-13)
    torch.testing.assert_close(c, c_ref, rtol=0, atol=1e-13)


def test_bad_arguments_are_refused_clearly():
    model = _model()
    x = torch.zeros(4, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match="x_t should be a tensor"):
        native.step_many(model, [[0.0] * 3], None)
    with pytest.raises(ValueError, match=r"x_t should have shape \(lanes, 3\)"):
        native.step_many(model, torch.zeros(4, 2, dtype=torch.float64), None)
    with pytest.raises(TypeError, match="pair of tensors"):
        native.step_many(model, x, torch.zeros(2, 4, 20))
    with pytest.raises(ValueError, match=r"State c should be a torch.float64 tensor of shape \(2, 4, 20\)"):
        bad = (torch.zeros(2, 4, 20, dtype=torch.float64), torch.zeros(2, 5, 20, dtype=torch.float64))
        native.step_many(model, x, bad)
    with pytest.raises(ValueError, match="call model.eval"):
        native.step_many(_model(dropout=0.2).train(), x, None)
