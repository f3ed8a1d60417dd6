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

That is the PyTorch implementation (``detached_steps_forward``), used where the
native kernel cannot run. On the CPU, ``native_forward`` and ``native_step`` run
``StatefulLSTM`` on ``ignite_lstm.native`` instead: its backward with the state
detached after every step is the same algorithm, written out in C++.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ignite_lstm import native

__all__ = ["detached_steps_forward", "elementwise_loss", "native_forward", "native_step"]


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
    B, C, _ = x.shape
    H = model.hidden_size
    masks = _dropout_masks(model, C, B, x)  # time-major (C, B, H), shared by both passes

    # Pass 1: every layer's hidden sequence by the fused recurrence, no graph.
    h_prev = []
    with torch.no_grad():
        inp = x
        for i, lstm in enumerate(model.layers):
            if masks[i] is not None:
                inp = inp * masks[i].transpose(0, 1)
            inp, _ = lstm(inp, (h0[i : i + 1], c0[i : i + 1]))  # (B, C, H)
            prev = torch.empty(C, B, H, dtype=x.dtype, device=x.device)
            prev[0] = h0[i]
            prev[1:] = inp[:, :-1].transpose(0, 1)
            h_prev.append((prev.view(C * B, H), inp[:, -1].clone()))

    # Pass 2: all positions at once, each from its detached previous state.
    h_last, c_last = [], []
    inp = x.transpose(0, 1).reshape(C * B, -1)
    for i, lstm in enumerate(model.layers):
        if masks[i] is not None:
            inp = inp * masks[i].view(C * B, H)
        inp, c_end = _DetachedCells.apply(
            inp, h_prev[i][0], c0[i], lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0
        )
        h_last.append(h_prev[i][1])
        c_last.append(c_end)
    y = model.head(inp).view(C, B, -1).transpose(0, 1)  # (B, C, O)
    return y, (torch.stack(h_last), torch.stack(c_last))


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


def _dropout_masks(model: nn.Module, T: int, B: int, like: torch.Tensor) -> list:
    """One inverted-dropout mask (T, B, H) per layer input after the first (None: no dropout)."""
    masks = [None] * len(model.layers)
    if model.training and model.dropout > 0.0:
        keep = 1.0 - model.dropout
        for i in range(1, len(model.layers)):
            shape = (T, B, model.hidden_size)
            masks[i] = torch.bernoulli(torch.full(shape, keep, device=like.device, dtype=like.dtype)) / keep
    return masks


def native_forward(model: nn.Module, x: torch.Tensor, state, detach_every_step: bool = False,
                   chunk_steps: int = 512) -> tuple[torch.Tensor, tuple]:
    """``StatefulLSTM.forward`` on the native CPU kernel (``ignite_lstm.native``).

    With gradients, each layer is one ``native.lstm_layer`` call over all T steps
    (through time, or with the state detached after every step). Without, the steps
    are walked in chunks of ``chunk_steps`` so that memory does not grow with T.

    Args:
        model: a ``StatefulLSTM`` on the CPU.
        x: (B, T, F) inputs; state: (h, c), each (num_layers, B, H), or None.
        detach_every_step: the gradient of the literal L = 1 loop.
        chunk_steps: steps per chunk without gradients.

    Returns:
        y (B, T, O) and the state after the last step (detached when ``detach_every_step``).
    """
    B, T, _ = x.shape
    if state is None:
        state = model.init_state(B, x.device, x.dtype)
    h0, c0 = state
    grad = torch.is_grad_enabled() and (
        x.requires_grad or h0.requires_grad or c0.requires_grad or any(p.requires_grad for p in model.parameters())
    )
    if not grad:
        return _native_inference(model, x, h0, c0, chunk_steps)
    if detach_every_step:
        h0, c0 = h0.detach(), c0.detach()
    masks = _dropout_masks(model, T, B, x)
    inp = x.transpose(0, 1)  # (T, B, F): the kernel walks time-major rows
    hs, cs = [], []
    for i, lstm in enumerate(model.layers):
        if masks[i] is not None:
            inp = inp * masks[i]
        inp, h, c = native.lstm_layer(
            inp.contiguous(), h0[i], c0[i], lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0,
            recurrent=not detach_every_step,
        )
        hs.append(h)
        cs.append(c)
    state = (torch.stack(hs), torch.stack(cs))
    if detach_every_step:
        state = (state[0].detach(), state[1].detach())
    return model.head(inp).transpose(0, 1), state


def _layers(model: nn.Module) -> list:
    # nn.LSTM keeps (w_ih, w_hh, b_ih, b_hh) in _flat_weights, current after .to()/assignment; reading
    # it skips four Module.__getattr__ calls per layer on the per-sample streaming path.
    return [m._flat_weights for m in model.layers]


def _native_inference(model, x, h0, c0, chunk_steps):
    B, T, _ = x.shape
    h, c = (s.detach().contiguous() for s in (h0, c0))
    y = x.new_empty(T, B, model.output_size)
    dropout = model.training and model.dropout > 0.0
    runner = None if dropout else native.stack_runner(model, _layers(model), (model.head.weight, model.head.bias), x.dtype)
    for start in range(0, T, chunk_steps):
        stop = min(T, start + chunk_steps)
        inp = x[:, start:stop].transpose(0, 1).contiguous()  # (C, B, F)
        if runner is not None:
            _, y[start:stop], h, c = runner.run(inp, h, c)
            continue
        masks = _dropout_masks(model, stop - start, B, x)  # layer by layer, to put the masks between them
        h, c = h.clone(), c.clone()
        for i, params in enumerate(_layers(model)):
            if masks[i] is not None:
                inp = inp * masks[i]
            inp, h[i], c[i] = native.lstm_layer_inference(inp, h[i], c[i], *params)
        torch.addmm(model.head.bias, inp.view(-1, inp.shape[-1]), model.head.weight.t(),
                    out=y[start:stop].view(-1, model.output_size))
    return y.transpose(0, 1), (h, c)


def native_step(model: nn.Module, x_t: torch.Tensor, state) -> tuple[torch.Tensor, tuple]:
    """``StatefulLSTM.step`` on the native kernel, without gradients. x_t (B, F) -> y_t (B, O)."""
    if state is None:
        state = model.init_state(x_t.shape[0], x_t.device, x_t.dtype)
    if model.training and model.dropout > 0.0:
        y, state = _native_inference(model, x_t[:, None], *state, 1)
        return y[:, 0], state
    runner = native.stack_runner(model, _layers(model), (model.head.weight, model.head.bias), x_t.dtype)
    _, y, h, c = runner.run(x_t.contiguous()[None], state[0].contiguous(), state[1].contiguous())
    return y[0], (h, c)
