"""Exact fast form of the literal L = 1 setting: state detached after every step.

With the state detached after every step and one optimizer step per batch, the
weights do not change inside the batch, so

1. the state sequence (h_t of every layer) is computed first, without a graph,
   by the fused ``nn.LSTM`` recurrence;
2. the gradient is one batched LSTM-cell evaluation over all B x C positions,
   each fed its input and the *detached* previous state of its layer; layer l+1
   at step t takes layer l's output of that same evaluation.

The cell state, which ``nn.LSTM`` does not return per step, follows from the
cheap elementwise recurrence c_t = f_t * c_{t-1} + i_t * g_t once h is known.
This is the gradient of the per-step loop, computed with a few large matrix
products instead of C small ones; tests/test_fused.py proves the equality.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["detached_steps_forward", "elementwise_loss"]


def _previous_cells(f: torch.Tensor, ig: torch.Tensor, c0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """c_{t-1} for every t of c_t = f_t * c_{t-1} + ig_t, and the last c.

    f, ig: (B, C, H) without graph; c0: (B, H). Returns ((B, C, H), (B, H)).
    """
    f_tm = f.transpose(0, 1).contiguous()  # (C, B, H): contiguous rows per step
    ig_tm = ig.transpose(0, 1).contiguous()
    prev = torch.empty_like(f_tm)
    c = c0
    for t in range(f_tm.shape[0]):
        prev[t] = c
        c = torch.addcmul(ig_tm[t], f_tm[t], c)
    return prev.transpose(0, 1), c


def detached_steps_forward(model: nn.Module, x: torch.Tensor, state) -> tuple[torch.Tensor, tuple]:
    """Outputs whose gradient equals that of the per-step loop with the state detached after every step.

    Args:
        model: a ``StatefulLSTM`` (uses its ``layers``, ``head`` and ``dropout``).
        x: (B, C, F) inputs of C consecutive steps.
        state: (h, c), each (num_layers, B, H), or None for a sequence start.

    Returns:
        y: (B, C, O) with graph; the state after the last step, detached.
    """
    if state is None:
        state = model.init_state(x.shape[0], x.device, x.dtype)
    h0, c0 = (s.detach() for s in state)
    masks = [None] * len(model.layers)
    if model.training and model.dropout > 0.0:
        keep = 1.0 - model.dropout
        for i in range(1, len(model.layers)):
            shape = (x.shape[0], x.shape[1], model.hidden_size)
            masks[i] = torch.bernoulli(torch.full(shape, keep, device=x.device, dtype=x.dtype)) / keep

    # Pass 1: every layer's hidden sequence, no graph.
    hidden = []
    with torch.no_grad():
        inp = x
        for i, lstm in enumerate(model.layers):
            if masks[i] is not None:
                inp = inp * masks[i]
            inp, _ = lstm(inp, (h0[i : i + 1], c0[i : i + 1]))  # (B, C, H)
            hidden.append(inp)

    # Pass 2: all positions at once, each from its detached previous state.
    h_last, c_last = [], []
    inp = x
    for i, lstm in enumerate(model.layers):
        if masks[i] is not None:
            inp = inp * masks[i]
        h_prev = torch.cat([h0[i].unsqueeze(1), hidden[i][:, :-1]], dim=1)  # (B, C, H)
        gates = F.linear(inp, lstm.weight_ih_l0, lstm.bias_ih_l0) + F.linear(h_prev, lstm.weight_hh_l0, lstm.bias_hh_l0)
        i_g, f_g, g_g, o_g = gates.chunk(4, dim=2)
        i_g, f_g, g_g, o_g = i_g.sigmoid(), f_g.sigmoid(), g_g.tanh(), o_g.sigmoid()
        with torch.no_grad():
            c_prev, c_end = _previous_cells(f_g, i_g * g_g, c0[i])
        c = f_g * c_prev + i_g * g_g
        inp = o_g * c.tanh()  # (B, C, H)
        h_last.append(hidden[i][:, -1])
        c_last.append(c_end)
    return model.head(inp), (torch.stack(h_last), torch.stack(c_last))


_ELEMENTWISE = {
    nn.MSELoss: lambda m, a, b: F.mse_loss(a, b, reduction="none"),
    nn.L1Loss: lambda m, a, b: F.l1_loss(a, b, reduction="none"),
    nn.SmoothL1Loss: lambda m, a, b: F.smooth_l1_loss(a, b, reduction="none", beta=m.beta),
    nn.HuberLoss: lambda m, a, b: F.huber_loss(a, b, reduction="none", delta=m.delta),
}


def elementwise_loss(loss_fn):
    """The unreduced form of a mean-reduced elementwise loss module, or None.

    For these losses the mean over a chunk of C steps equals the mean of the
    per-step losses, which is what makes chunked evaluation exact.
    """
    for cls, fn in _ELEMENTWISE.items():
        if type(loss_fn) is cls and getattr(loss_fn, "reduction", None) == "mean":
            return lambda a, b, _m=loss_fn, _fn=fn: _fn(_m, a, b)
    return None
