"""chrono_init: each unit's gate bias gives it the memory drawn for it, checked through the cell's own step."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from ignite_lstm.models import StatefulGRU, StatefulLSTM
from ignite_lstm.models.init import chrono_init

H, T_MAX = 64, 500.0


def _draws(seed: int, n_layers: int) -> list[torch.Tensor]:
    """The time constants u the initialisation draws, replayed from the same generator state."""
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(H, generator=g, dtype=torch.float64) * (T_MAX - 2) + 1 for _ in range(n_layers)]


def _zero_weights(model: nn.Module) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "weight" in name:
                p.zero_()


def test_lstm_forget_gate_keeps_u_over_1_plus_u_of_the_cell():
    model = StatefulLSTM(input_size=3, hidden_size=H, num_layers=2).double()
    chrono_init(model, T_MAX, generator=torch.Generator().manual_seed(7))
    _zero_weights(model)
    with torch.no_grad():
        for layer in model.layers:  # cell candidate g = tanh(0) = 0: c' = f * c, exactly
            layer.bias_ih_l0[2 * H : 3 * H] = 0
            layer.bias_hh_l0[2 * H : 3 * H] = 0
        h0 = torch.zeros(2, 4, H, dtype=torch.float64)
        c0 = torch.ones(2, 4, H, dtype=torch.float64)
        _, (_, c1) = model.step(torch.zeros(4, 3, dtype=torch.float64), (h0, c0))
    for layer, u in enumerate(_draws(7, 2)):
        assert u.min() >= 1 and u.max() <= T_MAX - 1
        keep = u / (1 + u)  # sigmoid(log u)
        torch.testing.assert_close(c1[layer], keep.expand(4, H), rtol=1e-12, atol=0)
        # the input gate is the forget gate's mirror: sigmoid(-log u) = 1 / (1 + u)
        b = model.layers[layer].bias_ih_l0 + model.layers[layer].bias_hh_l0
        torch.testing.assert_close(torch.sigmoid(b[:H]), 1 / (1 + u), rtol=1e-12, atol=0)


def test_memories_spread_from_a_few_steps_to_t_max():
    model = chrono_init(StatefulLSTM(input_size=3, hidden_size=1024), T_MAX, torch.Generator().manual_seed(0))
    b = (model.layers[0].bias_ih_l0 + model.layers[0].bias_hh_l0)[1024:2048].double()
    steps = 1 / (1 - torch.sigmoid(b))  # a cell kept at rate f decays over 1 / (1 - f) = 1 + u steps
    assert steps.min() < 2 + 0.01 * T_MAX and steps.max() > 0.99 * T_MAX
    assert abs(steps.mean().item() - (2 + T_MAX) / 2) < 0.03 * T_MAX  # uniform in u: mean (1 + (t_max - 1)) / 2 + 1


def test_gru_update_gate_keeps_u_over_1_plus_u_of_the_state():
    model = StatefulGRU(input_size=3, hidden_size=H).double()
    chrono_init(model, T_MAX, generator=torch.Generator().manual_seed(3))
    _zero_weights(model)
    with torch.no_grad():  # new gate n = tanh(0) = 0: h' = z * h
        model.layers[0].bias_ih_l0[2 * H :] = 0
        model.layers[0].bias_hh_l0[2 * H :] = 0
        h0 = torch.ones(1, 2, H, dtype=torch.float64)
        _, h1 = model.step(torch.zeros(2, 3, dtype=torch.float64), h0)
    (u,) = _draws(3, 1)
    torch.testing.assert_close(h1[0], (u / (1 + u)).expand(2, H), rtol=1e-12, atol=0)


def test_default_draws_come_from_torch_global_generator():
    torch.manual_seed(11)
    a = chrono_init(StatefulLSTM(input_size=3, hidden_size=H), T_MAX)
    torch.manual_seed(11)
    b = chrono_init(StatefulLSTM(input_size=3, hidden_size=H), T_MAX)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert math.isclose(a.layers[0].bias_hh_l0[H : 2 * H].abs().sum().item(), 0.0)


@pytest.mark.parametrize("t_max", [2, 0.5, -1])
def test_t_max_must_exceed_two(t_max):
    with pytest.raises(ValueError, match="t_max should be above 2"):
        chrono_init(StatefulLSTM(input_size=3, hidden_size=4), t_max)


def test_a_model_without_recurrent_cells_is_refused():
    with pytest.raises(ValueError, match="no nn.LSTM or nn.GRU"):
        chrono_init(nn.Linear(3, 4), 100)


@pytest.mark.parametrize("cls", [StatefulLSTM, StatefulGRU])
def test_a_fraction_of_the_units_gets_the_memories_and_the_others_keep_their_biases(cls):
    model = cls(input_size=3, hidden_size=H).double()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    chrono_init(model, T_MAX, generator=torch.Generator().manual_seed(5), fraction=0.25)
    k = 16  # round(0.25 * 64)
    u = torch.rand(k, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * (T_MAX - 2) + 1
    b_ih, b_hh = model.layers[0].bias_ih_l0, model.layers[0].bias_hh_l0
    prefix = "layers.0."
    # the chrono gate (an LSTM's forget gate, a GRU's update gate) of the first k units: log u; the rest as before
    torch.testing.assert_close(b_ih[H : H + k] + b_hh[H : H + k], torch.log(u), rtol=1e-12, atol=0)
    changed = torch.zeros(b_ih.shape[0], dtype=torch.bool)
    changed[H : H + k] = True
    if cls is StatefulLSTM:
        changed[:k] = True  # the input gate mirrors it
        torch.testing.assert_close(b_ih[:k], -torch.log(u), rtol=1e-12, atol=0)
    for name, bias in ((f"{prefix}bias_ih_l0", b_ih), (f"{prefix}bias_hh_l0", b_hh)):
        assert torch.equal(bias[~changed], before[name][~changed]), name
    for name, p in model.named_parameters():
        if "weight" in name:
            assert torch.equal(p, before[name])
    with pytest.raises(ValueError, match=r"Argument fraction should be in \(0, 1\], got 0"):
        chrono_init(model, T_MAX, fraction=0)
