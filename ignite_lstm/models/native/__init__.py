"""The LSTM recurrence as a native CPU kernel: the same numbers as ``nn.LSTM``, with less overhead per step.

A one-layer LSTM over T steps is a chain of T small matrix products: at batch 40 and
H = 64 each is 1.3 MFLOP, so ``nn.LSTM`` spends more time dispatching its ~10 ops per
step than computing. ``lstm_cpu.cpp`` runs the whole chain in one call (register-
blocked products, fused gate activations), and its backward: one pass from the last
step to the first, either through time (``recurrent=True``, truncated BPTT inside a
window) or with the previous state of every step a constant (the literal L = 1
setting). The large, parallel products (weight gradients, the input gradient) are the
kernel's own on AVX-512 builds (where MKL would take its AVX2 code on AMD processors) and
PyTorch's elsewhere (docs/kernel.md). Threads (PyTorch's own OpenMP threads) split the batch:
sequences are independent. ``step_many`` steps many independent streams in one call.

The library is compiled on first use with the system C++ compiler (a few seconds)
into a cache folder (``$IGNITE_LSTM_CACHE``, else ``~/.cache/ignite_lstm``) and reused
(``_native_lib``: building, loading, switching off). Without a compiler, on a GPU, or with
``IGNITE_LSTM_NATIVE=0``, the models fall back to their PyTorch code; ``available()`` tells
which. Here: the weights packed for the kernel, the calls, and the autograd functions: one layer
(``lstm_layer``), and the stack with its read-out with the state detached after every step
(``detached_stack``, the trainer's ``fused-detached`` chunks: one autograd node per chunk, its arrays
reused from chunk to chunk).
"""

from __future__ import annotations

import ctypes
import operator
import weakref

import torch

from ignite_lstm._internal.compat import tensor_version
from ignite_lstm.models.native.loader import available, describe, disabled, function, library

__all__ = [
    "available",
    "describe",
    "detached_stack",
    "disabled",
    "lstm_layer",
    "lstm_layer_inference",
    "stack_runner",
    "step_many",
]

_MIN_ROWS_PER_THREAD = 4  # below this, a thread's share of a step costs less than handing it over
_MIN_ROWS_PER_STEP_THREAD = 16  # the same for a call of one step (a fork and join per call, not per chunk)


def _loaded() -> ctypes.CDLL:
    """The library, where the callers run only after ``available()`` found it built."""
    lib = library()
    assert lib is not None
    return lib


# ---------------------------------------------------------------- packed weights

_packed: dict[tuple, tuple] = {}


def _pack(
    w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor, b_hh: torch.Tensor, cell: str = "lstm"
) -> torch.Tensor:
    """The layer's parameters in the kernel's layout, rebuilt only when one of them changed.

    A change is a new version counter (an optimizer step, ``load_state_dict``) or new storage.
    ``cell``: ``"lstm"`` or ``"gru"`` (``ignite_lstm.models.native.gru``).
    """
    tensors = (w_ih, w_hh, b_ih, b_hh)
    key = (cell,) + tuple(id(t) for t in tensors)
    stamp = tuple((tensor_version(t), t.data_ptr()) for t in tensors)
    hit = _packed.get(key)
    if hit is not None and hit[0] == stamp and all(r() is t for r, t in zip(hit[1], tensors)):
        return hit[2]
    H = w_hh.shape[1]
    I = w_ih.shape[1]
    out = torch.empty(getattr(_loaded(), f"{cell}_packed_size")(I, H), dtype=w_ih.dtype)
    src = [_checked(t.detach(), w_ih.dtype) for t in tensors]
    function(f"{cell}_pack", w_ih.dtype)(I, H, *(t.data_ptr() for t in src), out.data_ptr())
    if hit is None:
        weakref.finalize(w_ih, _packed.pop, key, None)  # the entry goes with its layer
    _packed[key] = (stamp, [weakref.ref(t) for t in tensors], out)
    return out


# ---------------------------------------------------------------- calls


def _threads(rows: int, steps: int) -> int:
    """Threads for a call: PyTorch's intra-op count, when each gets enough rows to be worth it."""
    per_thread = _MIN_ROWS_PER_STEP_THREAD if steps == 1 else _MIN_ROWS_PER_THREAD
    return max(1, min(torch.get_num_threads(), rows // per_thread))


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _forward(x, packed, H, h0, c0, hs, cs=None, gates=None, xh=None, h_n=None, c_n=None) -> None:
    T, B, I = x.shape
    n = _threads(B, T)
    work = x.new_empty(n * _loaded().lstm_forward_work(B, H))
    ptrs = [_ptr(t) for t in (x, packed, h0, c0, hs, cs, gates, xh, h_n, c_n, work)]
    function("lstm_forward", x.dtype)(n, T, B, I, H, *ptrs)


def _own_products() -> bool:
    """Whether the backward computes the weight and input gradients in the kernel (AVX-512 builds).

    There its 16-wide products beat MKL, which takes its AVX2 code on AMD processors; elsewhere
    PyTorch's products run (``_Layer.backward``).
    """
    return _loaded().ignite_lstm_simd() == 2


def _backward(recurrent, gates, cs, c0, dhs, w_hh, w_ih, rows, dc_n, dz, dx, dw, dh0, dc0) -> None:
    """rows: the forward's (x, hs, h0) for the kernel's own weight gradients into dw, or None (dw None)."""
    T, B, H = cs.shape
    I = w_ih.shape[1]
    n = _threads(B, T)
    work = cs.new_empty(n * _loaded().lstm_backward_work(B, I, H))
    x, hs, h0 = rows if rows is not None else (None, None, None)
    ptrs = [_ptr(t) for t in (gates, cs, c0, dhs, w_hh, w_ih, x, hs, h0, dc_n, dz, dx, dw, dh0, dc0, work)]
    function("lstm_backward", cs.dtype)(n, T, B, I, H, int(recurrent), *ptrs)


class _Stack:
    """A model's layers and read-out packed for the stack kernel, valid while no parameter changes."""

    def __init__(self, layers, head, dtype: torch.dtype) -> None:
        self.params = [t for params in layers for t in params] + [t for t in head if t is not None]
        self.stamp = self._stamp(self.params)
        self.L, self.H, self.I = len(layers), layers[0][1].shape[1], layers[0][0].shape[1]
        self.dtype = dtype
        self.packed = [_pack(*params) for params in layers]
        self.table = (ctypes.c_void_p * self.L)(*(p.data_ptr() for p in self.packed))
        self.head_w, self.head_b = (None if t is None else _checked(t.detach(), dtype).clone() for t in head)
        assert self.head_w is not None  # the read-out always has a weight; only its bias may be None
        self.O = self.head_w.shape[0]
        self.head_ptrs = (self.head_w.data_ptr(), _ptr(self.head_b))
        self.fn = function("lstm_stack_forward", dtype)
        self.work_size = _loaded().lstm_stack_work

    @staticmethod
    def _stamp(params) -> tuple:
        return tuple((tensor_version(t), t.data_ptr()) for t in params)

    def valid(self, layers, head, dtype) -> bool:
        params = [t for ps in layers for t in ps]
        params += [t for t in head if t is not None]
        return (
            dtype == self.dtype
            and len(params) == len(self.params)
            and all(map(operator.is_, params, self.params))
            and self._stamp(params) == self.stamp
        )

    def run(self, x: torch.Tensor, h_in, c_in, hidden: bool = False):
        """x (T, B, I) contiguous; returns (out (T, B, H) or None, y (T, B, O), h (L, B, H), c (L, B, H))."""
        T, B, _ = x.shape
        for name, t in (("h", h_in), ("c", c_in)):
            if t.dtype != self.dtype or not t.is_contiguous() or t.shape != (self.L, B, self.H):
                raise ValueError(
                    f"State {name} should be a contiguous {self.dtype} tensor of shape "
                    f"{(self.L, B, self.H)}, got {t.dtype} {tuple(t.shape)}."
                )
        h, c = torch.empty_like(h_in), torch.empty_like(c_in)
        out = x.new_empty(T, B, self.H) if hidden else None
        y = x.new_empty(T, B, self.O)
        n = _threads(B, T)
        work = x.new_empty(n * self.work_size(B, self.L, self.H))
        self.fn(
            n,
            T,
            B,
            self.L,
            self.I,
            self.H,
            self.O,
            x.data_ptr(),
            self.table,
            h_in.data_ptr(),
            c_in.data_ptr(),
            h.data_ptr(),
            c.data_ptr(),
            *self.head_ptrs,
            _ptr(out),
            y.data_ptr(),
            work.data_ptr(),
        )
        return out, y, h, c


_stacks: dict[int, _Stack] = {}


def stack_runner(owner, layers, head, dtype: torch.dtype) -> _Stack:
    """The packed stack for ``owner`` (a module), rebuilt when one of its parameters changed.

    Args:
        owner: the object the cache entry belongs to (it is dropped with it).
        layers: ``(w_ih, w_hh, b_ih, b_hh)`` per layer, as in ``nn.LSTM``.
        head: ``(weight (O, H), bias (O) or None)`` of the linear read-out.
        dtype: the input's dtype (every parameter must have it).

    Returns:
        An object whose ``run(x (T, B, I), h, c, hidden)`` returns ``(out, y, h, c)``.

    Example:
        >>> runner = stack_runner(model, layers, (model.head.weight, model.head.bias), x.dtype)
    """
    key = id(owner)
    hit = _stacks.get(key)
    if hit is not None and hit.valid(layers, head, dtype):
        return hit
    if hit is None:
        weakref.finalize(owner, _stacks.pop, key, None)
    _stacks[key] = runner = _Stack(layers, head, dtype)
    return runner


def _checked(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if t.dtype != dtype or t.device.type != "cpu":
        raise ValueError(f"Parameters should be {dtype} on the CPU like the input, got {t.dtype} on {t.device}.")
    return t.contiguous()


def lstm_layer_inference(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    """One LSTM layer over T steps without a graph; time-major.

    Args:
        x: (T, B, I) inputs. h0, c0: (B, H) initial state.
        w_ih, w_hh, b_ih, b_hh: the layer's ``nn.LSTM`` parameters (gate order i, f, g, o).

    Returns:
        (hs (T, B, H), h_n (B, H), c_n (B, H)).

    Example:
        >>> hs, h, c = lstm_layer_inference(x, h0, c0, *lstm.parameters())
    """
    T, B, _ = x.shape
    H = w_hh.shape[1]
    hs, h_n, c_n = x.new_empty(T, B, H), x.new_empty(B, H), x.new_empty(B, H)
    _forward(x.contiguous(), _pack(w_ih, w_hh, b_ih, b_hh), H, h0.contiguous(), c0.contiguous(), hs, h_n=h_n, c_n=c_n)
    return hs, h_n, c_n


class _Layer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, recurrent):
        T, B, I = x.shape
        H = w_hh.shape[1]
        x, h0, c0 = x.contiguous(), h0.contiguous(), c0.contiguous()
        hs, cs, gates = x.new_empty(T, B, H), x.new_empty(T, B, H), x.new_empty(T, B, 4 * H)
        # PyTorch's products: rows [x_t, h_{t-1}, 1], one product gives all weight gradients; the
        # kernel's own read x, hs and h0 where they are
        own = _own_products()
        xh = None if own else x.new_empty(T, B, I + H + 1)
        h_n, c_n = x.new_empty(B, H), x.new_empty(B, H)
        _forward(x, _pack(w_ih, w_hh, b_ih, b_hh), H, h0, c0, hs, cs, gates, xh, h_n, c_n)
        ctx.save_for_backward(c0, w_ih, w_hh, cs, gates, *((x, h0, hs) if own else (xh,)))
        ctx.recurrent = recurrent
        ctx.set_materialize_grads(False)  # unused outputs (often the final state) get None, not zeros
        return hs, h_n, c_n

    @staticmethod
    def backward(ctx, d_hs, d_hn, d_cn):
        c0, w_ih, w_hh, cs, gates, *rows = ctx.saved_tensors
        T, B, H = cs.shape
        I = w_ih.shape[1]
        d_hs = d_hs.contiguous() if d_hs is not None else cs.new_zeros(T, B, H)
        if d_hn is not None:
            d_hs = d_hs.clone()
            d_hs[-1] += d_hn
        recurrent = ctx.recurrent
        want_h0, want_c0 = ctx.needs_input_grad[1:3]
        dh0 = cs.new_empty(B, H) if recurrent and want_h0 else None
        dc0 = cs.new_empty(B, H) if recurrent and want_c0 else None
        dc_n = d_cn.contiguous() if d_cn is not None else None
        w_ih, w_hh = w_ih.contiguous(), w_hh.contiguous()
        if len(rows) == 3:  # the kernel's own products, from the rows x, h0, hs, a few steps at a time
            x, h0, hs = rows
            d_x = cs.new_empty(T, B, I) if ctx.needs_input_grad[0] else None
            d_w = cs.new_empty(4 * H, I + H + 1)  # [dW_ih, dW_hh, db]
            _backward(recurrent, gates, cs, c0, d_hs, w_hh, w_ih, (x, hs, h0), dc_n, None, d_x, d_w, dh0, dc0)
        else:
            (xh,) = rows
            dz = torch.empty_like(gates)
            _backward(recurrent, gates, cs, c0, d_hs, w_hh, w_ih, None, dc_n, dz, None, None, dh0, dc0)
            dz2 = dz.view(T * B, 4 * H)
            d_x = (dz2 @ w_ih).view(T, B, I) if ctx.needs_input_grad[0] else None
            d_w = dz2.t() @ xh.view(T * B, I + H + 1)  # (4H, I + H + 1) = [dW_ih, dW_hh, db]
        d_b = d_w[:, I + H].contiguous()
        return d_x, dh0, dc0, d_w[:, :I].contiguous(), d_w[:, I : I + H].contiguous(), d_b, d_b.clone(), None


def lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, recurrent: bool = True):
    """One LSTM layer over T steps with gradients; time-major.

    Args:
        x: (T, B, I) inputs. h0, c0: (B, H) initial state.
        w_ih, w_hh, b_ih, b_hh: the layer's ``nn.LSTM`` parameters (gate order i, f, g, o).
        recurrent: True: gradients flow through the state from step to step (as ``nn.LSTM``);
            False: every step's previous state is a constant (state detached after every step).

    Returns:
        (hs (T, B, H), h_n (B, H), c_n (B, H)).

    Example:
        >>> hs, h, c = lstm_layer(x, h0, c0, *lstm.parameters(), recurrent=False)
    """
    return _Layer.apply(x, h0, c0, w_ih, w_hh, b_ih, b_hh, recurrent)


class _StackBuffers:
    """The arrays of ``detached_stack`` for chunks of up to ``C`` steps of ``B`` rows, reused from chunk to chunk.

    Per layer the forward's hidden states, cells and activated gates (and, where PyTorch's products run the
    backward, the rows ``[x_t, h_{t-1}, 1]``), the chunk's inputs time-major, and the backward's gradients
    into the layers' outputs (two, used in turn down the stack) and, on builds without the kernel's own
    products, the gate gradients. A chunk of fewer steps uses the first steps of each (time-major: a
    contiguous prefix). Allocating them afresh for every chunk (tens of MB at batch 40 and 250 steps)
    costs page faults and first-touch work that the kernel then pays for.

    One forward borrows them until its backward has run (``lent``); a forward while they are lent gets
    arrays of its own. A reuse bumps the arrays' version counters, so that a retained graph of an earlier
    chunk, backpropagated again after a later forward, raises autograd's error about tensors modified in
    place instead of reading the later chunk's numbers.
    """

    def __init__(self, C: int, B: int, I0: int, H: int, L: int, dtype: torch.dtype, own: bool) -> None:
        self.shape = (B, I0, H, L, dtype, own)
        self.C = C
        new = torch.empty
        self.x = new(C, B, I0, dtype=dtype)
        self.hs = [new(C, B, H, dtype=dtype) for _ in range(L)]
        self.cs = [new(C, B, H, dtype=dtype) for _ in range(L)]
        self.gates = [new(C, B, 4 * H, dtype=dtype) for _ in range(L)]
        self.xh = None if own else [new(C, B, (I0 if i == 0 else H) + H + 1, dtype=dtype) for i in range(L)]
        self.dh = [new(C, B, H, dtype=dtype) for _ in range(2 if L > 1 else 1)]
        self.dz = None if own else new(C, B, 4 * H, dtype=dtype)
        self.lent = False

    def fits(self, C: int, B: int, I0: int, H: int, L: int, dtype: torch.dtype, own: bool) -> bool:
        return C <= self.C and self.shape == (B, I0, H, L, dtype, own)

    def saved(self) -> list[torch.Tensor]:
        """The arrays a forward leaves for its backward (whose version counters a reuse bumps)."""
        return [self.x, *self.hs, *self.cs, *self.gates, *(self.xh or [])]


_buffers: dict[int, _StackBuffers] = {}


def _borrow(owner, C: int, B: int, I0: int, H: int, L: int, dtype: torch.dtype, own: bool) -> _StackBuffers:
    """``owner``'s buffers when they fit and are free (lent to the caller until its backward), else new ones."""
    key = id(owner)
    hit = _buffers.get(key)
    if hit is not None and hit.lent:
        return _StackBuffers(C, B, I0, H, L, dtype, own)  # a graph not yet backpropagated holds them
    if hit is not None and hit.fits(C, B, I0, H, L, dtype, own):
        for t in hit.saved():
            torch.autograd.graph.increment_version(t)
    else:
        if hit is None:
            weakref.finalize(owner, _buffers.pop, key, None)
        hit = _buffers[key] = _StackBuffers(C, B, I0, H, L, dtype, own)
    hit.lent = True
    return hit


class _DetachedStack(torch.autograd.Function):
    """A stack of LSTM layers and its linear read-out over C steps, every step from its detached previous state.

    One autograd node per chunk: the forward runs each layer's kernel over the chunk and the read-out;
    the backward the read-out's gradients, then each layer's kernel backward from the last layer to the
    first, the gradient into a layer's input being the gradient into the outputs of the layer below.
    The same kernel calls and products as ``lstm_layer`` per layer followed by ``nn.Linear``.
    """

    @staticmethod
    def forward(ctx, owner, x, h0, c0, head_w, head_b, *params):
        B, C, I0 = x.shape
        L, H = len(params) // 4, params[1].shape[1]
        own = _own_products()
        buf = _borrow(owner, C, B, I0, H, L, x.dtype, own)
        x_tm = buf.x[:C]
        h0, c0 = h0.contiguous(), c0.contiguous()
        h_n, c_n = x.new_empty(L, B, H), x.new_empty(L, B, H)
        try:
            x_tm.copy_(x.transpose(0, 1))
            inp = x_tm
            for i in range(L):
                w_ih, w_hh, b_ih, b_hh = params[4 * i : 4 * i + 4]
                hs, cs, gates = buf.hs[i][:C], buf.cs[i][:C], buf.gates[i][:C]
                xh = None if buf.xh is None else buf.xh[i][:C]
                _forward(inp, _pack(w_ih, w_hh, b_ih, b_hh), H, h0[i], c0[i], hs, cs, gates, xh, h_n[i], c_n[i])
                inp = hs
            rows = inp.view(C * B, H)
            y = rows @ head_w.t() if head_b is None else torch.addmm(head_b, rows, head_w.t())
        except BaseException:
            buf.lent = False  # no graph holds them
            raise
        ctx.buf, ctx.has_bias, ctx.L = buf, head_b is not None, L
        saved = [x_tm, c0, head_w, *buf.hs, *buf.cs, *buf.gates, *params[0::4], *params[1::4]]
        ctx.save_for_backward(h0, *saved, *(buf.xh or []))
        ctx.mark_non_differentiable(h_n, c_n)  # the carried state is detached
        return y.view(C, B, -1).transpose(0, 1), h_n, c_n

    @staticmethod
    def backward(ctx, dy, _dh, _dc):
        buf, L = ctx.buf, ctx.L
        h0, x_tm, c0, head_w, *rest = ctx.saved_tensors
        hs_all, cs_all, gates_all = rest[:L], rest[L : 2 * L], rest[2 * L : 3 * L]
        w_ih_all, w_hh_all, xh_all = rest[3 * L : 4 * L], rest[4 * L : 5 * L], rest[5 * L :]
        C, B, I0 = x_tm.shape
        H = c0.shape[-1]
        dy_rows = dy.transpose(0, 1).reshape(C * B, -1)
        d_head_w = dy_rows.t() @ hs_all[L - 1][:C].view(C * B, H)
        d_head_b = dy_rows.sum(0) if ctx.has_bias else None
        dh = buf.dh[0][:C]
        torch.mm(dy_rows, head_w, out=dh.view(C * B, H))
        grads: list[torch.Tensor | None] = [None] * (4 * L)
        d_x = None
        for i in reversed(range(L)):
            w_ih, w_hh = w_ih_all[i].contiguous(), w_hh_all[i].contiguous()
            I = w_ih.shape[1]
            cs, gates = cs_all[i][:C], gates_all[i][:C]
            if i > 0:
                d_in = buf.dh[(L - i) % 2][:C]
            else:
                d_in = x_tm.new_empty(C, B, I) if ctx.needs_input_grad[1] else None
            if buf.dz is None:  # the kernel's own products, from the rows x, h0, hs
                inp = x_tm if i == 0 else hs_all[i - 1][:C]
                d_w = cs.new_empty(4 * H, I + H + 1)  # [dW_ih, dW_hh, db]
                _backward(
                    False,
                    gates,
                    cs,
                    c0[i],
                    dh,
                    w_hh,
                    w_ih,
                    (inp, hs_all[i][:C], h0[i]),
                    None,
                    None,
                    d_in,
                    d_w,
                    None,
                    None,
                )
            else:
                dz = buf.dz[:C]
                _backward(False, gates, cs, c0[i], dh, w_hh, w_ih, None, None, dz, None, None, None, None)
                dz2 = dz.view(C * B, 4 * H)
                if d_in is not None:
                    torch.mm(dz2, w_ih, out=d_in.view(C * B, I))
                d_w = dz2.t() @ xh_all[i][:C].view(C * B, I + H + 1)
            d_b = d_w[:, I + H].contiguous()
            grads[4 * i : 4 * i + 4] = [d_w[:, :I].contiguous(), d_w[:, I : I + H].contiguous(), d_b, d_b.clone()]
            if i > 0:
                dh = d_in
            else:
                d_x = d_in
        buf.lent = False  # the next chunk's forward may write them
        if d_x is not None:
            d_x = d_x.transpose(0, 1)
        return (None, d_x, None, None, d_head_w, d_head_b, *grads)


def detached_stack(owner, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, layers, head):
    """A stack of LSTM layers and its read-out over C steps with the state detached after every step.

    The gradient is that of the literal loop that detaches the state before every step (and of
    ``lstm_layer(..., recurrent=False)`` per layer followed by the read-out), in one autograd node
    whose forward and backward reuse ``owner``'s arrays from one chunk to the next.

    Args:
        owner: the object the reused arrays belong to (the model; they go with it).
        x: (B, C, I) inputs, batch-first. h0, c0: (L, B, H) the state before the first step (constants).
        layers: ``(w_ih, w_hh, b_ih, b_hh)`` per layer, as in ``nn.LSTM``.
        head: ``(weight (O, H), bias (O) or None)`` of the linear read-out.

    Returns:
        (y (B, C, O), h (L, B, H), c (L, B, H)): the outputs with their graph, the final state detached.

    Example:
        >>> y, h, c = detached_stack(model, x, h0, c0, model._weights(), (model.head.weight, model.head.bias))
    """
    params = [t for p in layers for t in p]
    return _DetachedStack.apply(owner, x, h0.detach(), c0.detach(), head[0], head[1], *params)


def step_many(model, x_t: torch.Tensor, state=None):
    """The next step of many independent streams (lanes) in one native call, without gradients.

    The serving path: lane n's input ``x_t[n]`` and state ``(h[:, n], c[:, n])`` give its output and
    next state, the same numbers as ``model.step`` (eval mode) on that lane alone. The whole stack runs
    in one kernel call, the lanes split between PyTorch's threads (16 lanes or more each), so that the
    per-call cost is shared by all lanes. Without the native kernel (or off the CPU) ``model.step``
    runs under ``torch.no_grad()``.

    Args:
        model: a ``StatefulLSTM`` (its dropout is not applied: the eval-mode step; a model in
            training mode with dropout is refused).
        x_t: (N, F) inputs of the N lanes.
        state: ``(h, c)``, each (num_layers, N, H), or None (every lane from zeros).

    Returns:
        (y_t (N, O), (h, c) each (num_layers, N, H)), new tensors (the inputs are not modified).

    Raises:
        TypeError: x_t is not a tensor, or state not a pair of tensors.
        ValueError: wrong shapes or dtypes, or a model in training mode with dropout.

    Example:
        >>> y, state = step_many(model.eval(), x_t, state)  # x_t (1000, 5): 1,000 streams, one step
    """
    if not isinstance(x_t, torch.Tensor):
        raise TypeError(f"Argument x_t should be a tensor, got {type(x_t).__name__}.")
    if x_t.dim() != 2 or x_t.shape[1] != model.input_size:
        raise ValueError(f"Argument x_t should have shape (lanes, {model.input_size}), got {tuple(x_t.shape)}.")
    if model.training and model.dropout > 0.0:
        raise ValueError("step_many runs the eval-mode step; call model.eval() first (the model has dropout).")
    if state is None:
        state = model.init_state(x_t.shape[0], x_t.device, x_t.dtype)
    if not isinstance(state, (tuple, list)) or len(state) != 2 or not all(isinstance(s, torch.Tensor) for s in state):
        raise TypeError("Argument state should be a pair of tensors (h, c), or None.")
    shape = (model.num_layers, x_t.shape[0], model.hidden_size)
    for name, s in zip(("h", "c"), state):
        if tuple(s.shape) != shape or s.dtype != x_t.dtype:
            raise ValueError(
                f"State {name} should be a {x_t.dtype} tensor of shape {shape}, got {s.dtype} {tuple(s.shape)}."
            )
    with torch.no_grad():
        if not available(x_t, *model.parameters()):
            return model.step(x_t, tuple(state))
        runner = stack_runner(model, model._weights(), (model.head.weight, model.head.bias), x_t.dtype)
        _, y, h, c = runner.run(x_t.contiguous()[None], state[0].contiguous(), state[1].contiguous())
    return y[0], (h, c)
