"""The GRU recurrence on the native CPU kernel: the same numbers as ``nn.GRU``, in one call per layer.

``lstm_cpu.cpp`` (section GRU) runs a GRU layer over T steps, and its backward through
time or with the previous state of every step a constant (state detached after every step,
the literal L = 1 setting), as ``ignite_lstm.models.native`` does for the LSTM, with the weight and
input gradients on the kernel's own products on AVX-512 builds; elsewhere the kernel returns
the gradients of the gates' pre-activations and the weight and input gradients are PyTorch's
products of those. Gates in PyTorch's order (r, z, n).
"""

from __future__ import annotations

import torch

from ignite_lstm.models.native import _loaded, _own_products, _pack, _ptr, _threads, function

__all__ = ["gru_layer", "gru_layer_inference"]


def _forward(x, packed, H, h0, hs, saved=None, h_n=None) -> None:
    T, B, I = x.shape
    n = _threads(B, T)
    work = x.new_empty(n * _loaded().gru_forward_work(B, H))
    ptrs = [_ptr(t) for t in (x, packed, h0, hs, saved, h_n, work)]
    function("gru_forward", x.dtype)(n, T, B, I, H, *ptrs)


def gru_layer_inference(x, h0, w_ih, w_hh, b_ih, b_hh):
    """One GRU layer over T steps without a graph; time-major.

    Args:
        x: (T, B, I) inputs. h0: (B, H) initial state.
        w_ih, w_hh, b_ih, b_hh: the layer's ``nn.GRU`` parameters (gate order r, z, n).

    Returns:
        (hs (T, B, H), h_n (B, H)).

    Example:
        >>> hs, h = gru_layer_inference(x, h0, *gru.parameters())
    """
    T, B, _ = x.shape
    H = w_hh.shape[1]
    hs, h_n = x.new_empty(T, B, H), x.new_empty(B, H)
    _forward(x.contiguous(), _pack(w_ih, w_hh, b_ih, b_hh, cell="gru"), H, h0.contiguous(), hs, h_n=h_n)
    return hs, h_n


class _GruLayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, recurrent):
        T, B, _ = x.shape
        H = w_hh.shape[1]
        x, h0 = x.contiguous(), h0.contiguous()
        hs, saved, h_n = x.new_empty(T, B, H), x.new_empty(T, B, 4 * H), x.new_empty(B, H)
        _forward(x, _pack(w_ih, w_hh, b_ih, b_hh, cell="gru"), H, h0, hs, saved, h_n)
        ctx.save_for_backward(x, h0, w_ih, w_hh, hs, saved)
        ctx.recurrent = recurrent
        ctx.set_materialize_grads(False)
        return hs, h_n

    @staticmethod
    def backward(ctx, d_hs, d_hn):
        x, h0, w_ih, w_hh, hs, saved = ctx.saved_tensors
        T, B, H = hs.shape
        I = x.shape[2]
        d_hs = d_hs.contiguous() if d_hs is not None else hs.new_zeros(T, B, H)
        if d_hn is not None:
            d_hs = d_hs.clone()
            d_hs[-1] += d_hn
        recurrent = ctx.recurrent
        dh0 = hs.new_empty(B, H) if recurrent and ctx.needs_input_grad[1] else None
        n = _threads(B, T)
        work = hs.new_empty(n * _loaded().gru_backward_work(B, I, H))
        w_ih, w_hh = w_ih.contiguous(), w_hh.contiguous()
        fn = function("gru_backward", hs.dtype)
        if _own_products():  # the kernel's own weight and input gradients, as for the LSTM
            d_x = hs.new_empty(T, B, I) if ctx.needs_input_grad[0] else None
            dw_ih, dw_hh = hs.new_empty(3 * H, I + 1), hs.new_empty(3 * H, H + 1)  # [dW, db]
            ptrs = [_ptr(t) for t in (saved, hs, h0, d_hs, w_hh, w_ih, x, None, None, d_x, dw_ih, dw_hh, dh0, work)]
            fn(n, T, B, I, H, int(recurrent), *ptrs)
            return (
                d_x,
                dh0,
                dw_ih[:, :I].contiguous(),
                dw_hh[:, :H].contiguous(),
                dw_ih[:, I].contiguous(),
                dw_hh[:, H].contiguous(),
                None,
            )
        dgi, dgh = hs.new_empty(T, B, 3 * H), hs.new_empty(T, B, 3 * H)
        ptrs = [_ptr(t) for t in (saved, hs, h0, d_hs, w_hh, None, None, dgi, dgh, None, None, None, dh0, work)]
        fn(n, T, B, I, H, int(recurrent), *ptrs)
        dgi2, dgh2 = dgi.view(T * B, 3 * H), dgh.view(T * B, 3 * H)
        h_prev = torch.cat([h0[None], hs[:-1]]).view(T * B, H)
        d_x = (dgi2 @ w_ih).view(T, B, I) if ctx.needs_input_grad[0] else None
        return (d_x, dh0, dgi2.t() @ x.view(T * B, I), dgh2.t() @ h_prev, dgi2.sum(0), dgh2.sum(0), None)


def gru_layer(x, h0, w_ih, w_hh, b_ih, b_hh, recurrent: bool = True):
    """One GRU layer over T steps with gradients; time-major.

    Args:
        x: (T, B, I) inputs. h0: (B, H) initial state.
        w_ih, w_hh, b_ih, b_hh: the layer's ``nn.GRU`` parameters (gate order r, z, n).
        recurrent: True: gradients flow through the state from step to step (as ``nn.GRU``);
            False: every step's previous state is a constant (state detached after every step).

    Returns:
        (hs (T, B, H), h_n (B, H)).

    Example:
        >>> hs, h = gru_layer(x, h0, *gru.parameters(), recurrent=False)
    """
    return _GruLayer.apply(x, h0, w_ih, w_hh, b_ih, b_hh, recurrent)
