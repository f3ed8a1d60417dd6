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
products instead of C small ones; tests/engine/test_fused.py proves the equality.

This is the PyTorch implementation, used by ``StatefulLSTM`` where the native
kernel cannot run (``ignite_lstm.models.native``, whose backward with the state detached
after every step is the same algorithm written out in C++). It takes the layers'
parameters and plain tensors: the model owns dropout, state and the choice of backend.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

__all__ = ["detached_steps_forward"]


class _DetachedCells(torch.autograd.Function):
    """One LSTM layer at all C x B positions, each from its detached previous state.

    Rows are time-major: row ``t * B + b`` is step t of sequence b. Forward computes
    the gates once, runs the cheap cell recurrence c_t = f_t * c_{t-1} + i_t * g_t over
    them (the previous cells are constants of the gradient), and returns h; the
    backward is written out so that the whole layer costs three matrix products and
    a handful of elementwise passes, without autograd's per-op bookkeeping.
    """

    @staticmethod
    def forward(ctx, inp, h_prev, c0, w_ih, w_hh, b_ih, b_hh):
        # inp (C*B, In), h_prev (C*B, H) constant, c0 (B, H) constant.
        B, H = c0.shape
        C = inp.shape[0] // B
        gates = torch.addmm(b_ih + b_hh, inp, w_ih.t())
        gates.addmm_(h_prev, w_hh.t())  # (C*B, 4H), order i, f, g, o
        gates[:, : 2 * H].sigmoid_()
        gates[:, 2 * H : 3 * H].tanh_()
        gates[:, 3 * H :].sigmoid_()
        i, f, g, o = gates.view(C, B, 4 * H).split(H, dim=2)
        ig = i * g
        cells = torch.empty(C + 1, B, H, dtype=inp.dtype, device=inp.device)  # cells[t] = c_{t-1}
        cells[0] = c0
        for t in range(C):
            torch.addcmul(ig[t], f[t], cells[t], out=cells[t + 1])
        tanh_c = cells[1:].tanh().view(C * B, H)
        h = o.reshape(C * B, H) * tanh_c
        ctx.save_for_backward(inp, h_prev, cells, gates, tanh_c, w_ih, w_hh)
        c_end = cells[C].clone()
        ctx.mark_non_differentiable(c_end)  # the carried state is detached (its backward ignores it)
        return h, c_end

    @staticmethod
    def backward(ctx, dh, _):
        inp, h_prev, cells, gates, tanh_c, w_ih, w_hh = ctx.saved_tensors
        H = h_prev.shape[1]
        i, f, g, o = gates.split(H, dim=1)
        c_prev = cells[:-1].reshape(-1, H)
        one = gates.new_ones(())
        # Activation slopes in one pass: x - x^2 is sigmoid' for i, f, o; tanh' = 1 - g^2.
        slope = torch.addcmul(gates, gates, gates, value=-1.0)
        torch.addcmul(one, g, g, value=-1.0, out=slope[:, 2 * H : 3 * H])
        dc = torch.addcmul(one, tanh_c, tanh_c, value=-1.0).mul_(o).mul_(dh)  # dL/dc
        d_gates = torch.empty_like(gates)
        d_i, d_f, d_g, d_o = d_gates.split(H, dim=1)
        torch.mul(dc, g, out=d_i)
        torch.mul(dc, c_prev, out=d_f)
        torch.mul(dc, i, out=d_g)
        torch.mul(dh, tanh_c, out=d_o)
        d_gates.mul_(slope)  # dL/d(pre-activation gates)
        d_inp = d_gates @ w_ih if ctx.needs_input_grad[0] else None
        d_w_ih = d_gates.t() @ inp
        d_w_hh = d_gates.t() @ h_prev
        d_b = d_gates.sum(0)
        return d_inp, None, None, d_w_ih, d_w_hh, d_b, d_b


def detached_steps_forward(
    layers: Sequence[nn.LSTM] | nn.ModuleList,
    head: nn.Module,
    x: torch.Tensor,
    h0: torch.Tensor,
    c0: torch.Tensor,
    masks: Sequence[torch.Tensor | None],
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Outputs whose gradient equals that of the per-step loop with the state detached after every step.

    Args:
        layers: one single-layer ``nn.LSTM`` per stacked layer (batch-first).
        head: the read-out applied to the last layer's hidden state.
        x: (B, C, F) inputs of C consecutive steps.
        h0, c0: (num_layers, B, H) state before the first step (treated as constants).
        masks: per layer, an inverted-dropout mask (C, B, H) for its input, or None.

    Returns:
        y: (B, C, O) with graph; the state after the last step, detached.
    """
    h0, c0 = h0.detach(), c0.detach()
    B, C, _ = x.shape
    H = h0.shape[-1]

    # Pass 1: every layer's hidden sequence by the fused recurrence, no graph.
    h_prev = []
    with torch.no_grad():
        inp = x
        for i, lstm in enumerate(layers):
            if (mask := masks[i]) is not None:
                inp = inp * mask.transpose(0, 1)
            inp, _ = lstm(inp, (h0[i : i + 1], c0[i : i + 1]))  # (B, C, H)
            prev = torch.empty(C, B, H, dtype=x.dtype, device=x.device)
            prev[0] = h0[i]
            prev[1:] = inp[:, :-1].transpose(0, 1)
            h_prev.append((prev.view(C * B, H), inp[:, -1].clone()))

    # Pass 2: all positions at once, each from its detached previous state.
    h_last, c_last = [], []
    inp = x.transpose(0, 1).reshape(C * B, -1)
    for i, lstm in enumerate(layers):
        if (mask := masks[i]) is not None:
            inp = inp * mask.view(C * B, H)
        inp, c_end = _DetachedCells.apply(
            inp, h_prev[i][0], c0[i], lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0
        )
        h_last.append(h_prev[i][1])
        c_last.append(c_end)
    y = head(inp).view(C, B, -1).transpose(0, 1)  # (B, C, O)
    return y, (torch.stack(h_last), torch.stack(c_last))
