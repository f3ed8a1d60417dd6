"""An LSTM stack stepped by hand from its weights: the reference the engine tests compare with."""

from __future__ import annotations

import torch


def cell(x, h, c, lstm):
    """One LSTM cell step written out from the weights (independent of the package's code)."""
    gates = x @ lstm.weight_ih_l0.T + lstm.bias_ih_l0 + h @ lstm.weight_hh_l0.T + lstm.bias_hh_l0
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def hand_run(model, x, window=None, state=None):
    """Per-step loop of a ``StatefulLSTM`` over x (B, S, F), state detached every `window` steps (None: never).

    Returns y (B, S, O) and the state as two lists (per layer) of (B, H) tensors.
    """
    n = model.num_layers
    if state is None:
        zero = x.new_zeros(x.shape[0], model.hidden_size)
        state = ([zero] * n, [zero] * n)
    hs, cs = list(state[0]), list(state[1])
    outputs = []
    for t in range(x.shape[1]):
        if window is not None and t % window == 0:
            hs, cs = [h.detach() for h in hs], [c.detach() for c in cs]
        inp = x[:, t]
        for i, lstm in enumerate(model.layers):
            hs[i], cs[i] = cell(inp, hs[i], cs[i], lstm)
            inp = hs[i]
        outputs.append(model.head(inp))
    return torch.stack(outputs, dim=1), (hs, cs)
