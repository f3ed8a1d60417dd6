"""The native CPU kernel against PyTorch's own LSTM code (ignite_lstm/native.py)."""

import logging
import os
import stat
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from ignite_lstm.models import native
from ignite_lstm.models.lstm import StatefulLSTM
from ignite_lstm.models.native import loader as _native_lib
from ignite_lstm.models.native.build import build_library

pytestmark = pytest.mark.skipif(not native.available(), reason="native kernel not built (no C++ compiler)")


def _model(num_layers=2, hidden=5, dtype=torch.float64, inputs=3, outputs=2, seed=0):
    torch.manual_seed(seed)
    return StatefulLSTM(inputs, hidden, num_layers=num_layers, output_size=outputs).to(dtype)


def _data(batch, steps, inputs=3, dtype=torch.float64, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, steps, inputs, generator=gen, dtype=torch.float64).to(dtype)


def _state(model, batch, dtype, seed=2):
    gen = torch.Generator().manual_seed(seed)
    shape = (model.num_layers, batch, model.hidden_size)
    return tuple((0.5 * torch.randn(shape, generator=gen, dtype=torch.float64)).to(dtype) for _ in range(2))


def _loss_and_grads(model, x, state, detach):
    model.zero_grad()
    x = x.clone().requires_grad_(True)
    state = tuple(s.clone().requires_grad_(True) for s in state)
    y, (h, c) = model(x, state, detach_every_step=detach)
    # every output enters the loss, the final state too, with weights that tell them apart
    loss = (y**2).sum() + 0.3 * (h**2).sum() + 0.2 * (c**3).sum()
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    inputs = [x.grad] + [s.grad if s.grad is not None else torch.zeros_like(s) for s in state]
    return y.detach(), h.detach(), c.detach(), grads, inputs


def _rel(a, b):
    diff = (a - b).norm()
    return 0.0 if diff == 0 else (diff / b.norm()).item()


@pytest.mark.parametrize("detach", [False, True], ids=["through-time", "detached"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_forward_and_gradients_equal_pytorch_in_float64(num_layers, detach):
    model = _model(num_layers)
    x = _data(4, 9)
    state = _state(model, 4, torch.float64)
    got = _loss_and_grads(model, x, state, detach)
    with native.disabled():
        want = _loss_and_grads(model, x, state, detach)
    for a, b in zip(got[:3], want[:3]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-13)
    for a, b in zip(got[3] + got[4], want[3] + want[4]):
        assert _rel(a, b) <= 1e-12
    if detach:  # the state detached before every step: no gradient reaches the initial state
        assert all(g.abs().max() == 0 for g in got[4][1:])
    else:
        assert all(g.abs().max() > 0 for g in got[4][1:])


def _literal_detached(model, x, state):
    """The literal L = 1 loop: the state detached before every step, one torch.lstm_cell per layer and step."""
    hs, cs = list(state[0]), list(state[1])
    ys = []
    for t in range(x.shape[1]):
        inp = x[:, t]
        for i, lstm in enumerate(model.layers):
            hs[i], cs[i] = torch.lstm_cell(
                inp,
                (hs[i].detach(), cs[i].detach()),
                *(lstm.weight_ih_l0, lstm.weight_hh_l0),
                *(lstm.bias_ih_l0, lstm.bias_hh_l0),
            )
            inp = hs[i]
        ys.append(model.head(inp))
    return torch.stack(ys, 1), (torch.stack(hs).detach(), torch.stack(cs).detach())


def _chunk_grads(model, x, state, weights, run):
    """Outputs, final state and the gradients of every parameter and of x, for a loss (y * weights).sum()."""
    model.zero_grad()
    x = x.clone().requires_grad_(True)
    y, (h, c) = run(model, x, state)
    (y * weights).sum().backward()
    return [y.detach(), h, c, x.grad] + [p.grad.clone() for p in model.parameters()]


def _native_detached(model, x, state):
    return model(x, state, detach_every_step=True)


@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_detached_stack_equals_the_per_step_loop_in_float64(num_layers):
    """``native.detached_stack`` (one autograd node per chunk, arrays reused from chunk to chunk) against the
    literal loop: outputs, final state, the read-out's, every layer's and the input's gradients; over a chunk of
    9 steps, then one of 4 (a prefix of the reused arrays), then two chunks whose graphs are both held before
    either backward (the second gets arrays of its own)."""
    model = _model(num_layers, hidden=5, outputs=2)
    gen = torch.Generator().manual_seed(3)
    xs = [_data(4, steps, seed=s) for s, steps in ((10, 9), (11, 4), (12, 6), (13, 6))]
    ws = [torch.randn(4, x.shape[1], 2, generator=gen, dtype=torch.float64) for x in xs]
    state = _state(model, 4, torch.float64)
    for x, w in zip(xs[:2], ws[:2]):
        got = _chunk_grads(model, x, state, w, _native_detached)
        want = _chunk_grads(model, x, state, w, _literal_detached)
        for a, b in zip(got, want):
            assert _rel(a, b) <= 1e-12
        state = got[1:3]
    # two graphs held at once: the second forward may not write the first one's arrays
    model.zero_grad()
    inputs = [x.clone().requires_grad_(True) for x in xs[2:]]
    y_a, s_a = model(inputs[0], state, detach_every_step=True)
    y_b, _ = model(inputs[1], s_a, detach_every_step=True)
    ((y_b * ws[3]).sum() + (y_a * ws[2]).sum()).backward()
    got = [inputs[0].grad, inputs[1].grad] + [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    refs = [x.clone().requires_grad_(True) for x in xs[2:]]
    r_a, rs_a = _literal_detached(model, refs[0], state)
    r_b, _ = _literal_detached(model, refs[1], rs_a)
    ((r_b * ws[3]).sum() + (r_a * ws[2]).sum()).backward()
    want = [refs[0].grad, refs[1].grad] + [p.grad.clone() for p in model.parameters()]
    for a, b in [(y_a, r_a), (y_b, r_b), *zip(got, want)]:
        assert _rel(a.detach(), b.detach()) <= 1e-12


def test_detached_stack_refuses_a_retained_graph_whose_arrays_a_later_chunk_wrote():
    """A graph kept with retain_graph=True and backpropagated again after the next chunk's forward (which reuses
    the arrays) raises autograd's error instead of reading the later chunk's numbers."""
    model = _model(2)
    x = _data(3, 5)
    y, state = model(x, None, detach_every_step=True)
    y.sum().backward(retain_graph=True)
    model(x, state, detach_every_step=True)[0].sum().backward()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_gradcheck_through_time():
    model = _model(2, hidden=4)
    x = _data(3, 5)
    h0, c0 = _state(model, 3, torch.float64)
    args = (x.requires_grad_(True), h0.requires_grad_(True), c0.requires_grad_(True))

    def f(x, h, c):
        y, (h_n, c_n) = model(x, (h, c))
        return y, h_n, c_n

    assert torch.autograd.gradcheck(f, args)


# H = 5 and 37: tails of both the 16-wide products and the 8-wide gates; 64: no tail.
@pytest.mark.parametrize("hidden", [5, 37, 64])
@pytest.mark.parametrize("batch", [1, 7, 13])  # row blocks of 6 and their remainders
def test_float32_within_rounding_of_pytorch(hidden, batch):
    model = _model(2, hidden=hidden, dtype=torch.float32)
    x = _data(batch, 30, dtype=torch.float32)
    state = _state(model, batch, torch.float32)
    got = _loss_and_grads(model, x, state, detach=False)
    with native.disabled():
        want = _loss_and_grads(model, x, state, detach=False)
    for a, b in zip(got[:3], want[:3]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert _rel(torch.cat([g.flatten() for g in got[3]]), torch.cat([g.flatten() for g in want[3]])) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inference_and_step_equal_pytorch(dtype):
    model = _model(3, hidden=12, dtype=dtype).eval()
    x = _data(6, 40, dtype=dtype)
    state = _state(model, 6, dtype)
    tol = {"rtol": 0, "atol": 1e-13} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    with torch.no_grad():
        with native.disabled():
            y_ref, (h_ref, c_ref) = model(x, state)
        y, (h, c) = model(x, state)
        torch.testing.assert_close(y, y_ref, **tol)
        torch.testing.assert_close(h, h_ref, **tol)
        torch.testing.assert_close(c, c_ref, **tol)
        s, outs = state, []
        for t in range(x.shape[1]):
            y_t, s = model.step(x[:, t], s)
            outs.append(y_t)
        torch.testing.assert_close(torch.stack(outs, 1), y_ref, **tol)
        torch.testing.assert_close(s[0], h_ref, **tol)
        # chunks of the time axis carry the state exactly: 40 steps in chunks of 7
        model.native_chunk_steps = 7
        y_chunked, _ = model(x, state)
        torch.testing.assert_close(y_chunked, y, rtol=0, atol=0)


def test_inputs_are_not_modified():
    model = _model(2).eval()
    x = _data(5, 8)
    state = _state(model, 5, torch.float64)
    copies = [x.clone(), *(s.clone() for s in state)]
    with torch.no_grad():
        model(x, state)
        model.step(x[:, 0], state)
    for a, b in zip([x, *state], copies):
        assert torch.equal(a, b)


def test_threads_split_the_batch_without_changing_the_kernels_bits():
    """The kernel's own results do not depend on the thread count; the BLAS products nearly so.

    Each thread takes whole rows (sequences) and runs the recurrence exactly as one thread
    would, so the state it computes (every layer's h and c at the end) is the same bits.
    Every gradient and the read-out pass through sums split by thread as well: BLAS products
    (the read-out; on AVX2 builds the input and weight gradients, ``native.py``, ``models.py``),
    which the BLAS library may split by thread count in a way that depends on the processor
    and its instruction set, and on AVX-512 builds the kernel's own weight gradients, summed
    per thread and then added: they are asserted to float32 rounding, not bit for bit.
    """
    model = _model(2, hidden=32, dtype=torch.float32)
    x = _data(40, 50, dtype=torch.float32)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            assert native._threads(40, 50) == threads  # the split is really taken
            results.append(_loss_and_grads(model, x, _state(model, 40, torch.float32), detach=True))
    finally:
        torch.set_num_threads(before)
    (y1, h1, c1, g1, i1), (y2, h2, c2, g2, i2) = results
    assert torch.equal(h1, h2) and torch.equal(c1, c2)  # the kernel's recurrence
    for a, b in zip([y1, *i1, *g1], [y2, *i2, *g2]):  # read-out and every gradient: through BLAS
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_packed_weights_follow_an_optimizer_step():
    model = _model(2).eval()
    x = _data(2, 6)
    with torch.no_grad():
        before, _ = model(x)
        for p in model.parameters():
            p.mul_(0.5)  # in place: the same tensors, a new version
        after, _ = model(x)
        with native.disabled():
            want, _ = model(x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, want, rtol=0, atol=1e-13)


def test_wrong_dtype_is_refused_clearly():
    model = _model(1)  # float64
    with pytest.raises(ValueError, match="Parameters should be torch.float32 on the CPU like the input"):
        with torch.no_grad():
            model(torch.zeros(2, 3, 3))


def test_missing_compiler_falls_back_to_pytorch(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(_native_lib._state, "lib", None)
    monkeypatch.setitem(_native_lib._state, "tried", False)
    monkeypatch.setenv("IGNITE_LSTM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with caplog.at_level(logging.WARNING, logger="ignite_lstm.models.native"):
        assert not native.available()
    assert "Native LSTM kernel unavailable, using PyTorch's LSTM" in caplog.text
    model = _model(2)
    x = _data(2, 5)
    y, _ = model(x)  # the PyTorch code runs
    with native.disabled():
        torch.testing.assert_close(y, model(x)[0], rtol=0, atol=0)


def test_switch_off_by_environment(monkeypatch):
    monkeypatch.setitem(_native_lib._state, "lib", None)
    monkeypatch.setitem(_native_lib._state, "tried", False)
    monkeypatch.setenv("IGNITE_LSTM_NATIVE", "0")
    assert not native.available()


def test_build_is_cached_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("IGNITE_LSTM_CACHE", str(tmp_path))
    lib = _native_lib._build()
    built = sorted(tmp_path.glob("lstm_cpu-*.so"))
    assert len(built) == 1 and lib.ignite_lstm_abi() == _native_lib._ABI
    stamp = built[0].stat().st_mtime_ns
    _native_lib._build()
    assert sorted(tmp_path.glob("*")) == built and built[0].stat().st_mtime_ns == stamp  # no rebuild, no leftovers


def test_unsupported_inputs_use_pytorch():
    assert not native.available(torch.zeros(2, dtype=torch.float16))
    assert not native.available(torch.zeros(2, dtype=torch.float32), torch.zeros(2, dtype=torch.float64))
    model = _model(1, dtype=torch.bfloat16)
    y, _ = model(torch.zeros(1, 4, 3, dtype=torch.bfloat16))  # nn.LSTM's code path
    assert y.dtype == torch.bfloat16


def test_lstm_layer_matches_nn_lstm_directly():
    torch.manual_seed(3)
    lstm = nn.LSTM(4, 6).double()
    x = torch.randn(11, 3, 4, dtype=torch.float64)
    h0, c0 = torch.randn(2, 3, 6, dtype=torch.float64)
    hs, h, c = native.lstm_layer(x, h0, c0, *lstm.parameters())
    ref, (h_ref, c_ref) = lstm(x, (h0[None], c0[None]))
    torch.testing.assert_close(hs, ref, rtol=0, atol=1e-14)
    torch.testing.assert_close(h, h_ref[0], rtol=0, atol=1e-14)
    torch.testing.assert_close(c, c_ref[0], rtol=0, atol=1e-14)


def test_describe_names_the_code_that_runs():
    assert native.describe().startswith("native (")
    assert native.describe(torch.device("cuda")) == "PyTorch"
    with native.disabled():
        assert native.describe() == "PyTorch (native kernel off or not built)"


def test_unwritable_cache_folder_falls_back_to_a_temp_folder(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder's parent should be")
    monkeypatch.setenv("IGNITE_LSTM_CACHE", str(blocker / "cache"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    lib = _native_lib._build()
    assert lib.ignite_lstm_abi() == _native_lib._ABI
    assert len(list((tmp_path / "tmp").glob("ignite_lstm-*/lstm_cpu-*.so"))) == 1


def test_gradient_reaches_the_initial_state_of_a_frozen_model():
    model = _model(2).requires_grad_(False)
    x = _data(2, 6)
    h0, c0 = (s.requires_grad_(True) for s in _state(model, 2, torch.float64))
    y, _ = model(x, (h0, c0))
    y.sum().backward()
    got = h0.grad.clone(), c0.grad.clone()
    h0.grad = c0.grad = None
    with native.disabled():
        model(x, (h0, c0))[0].sum().backward()
    torch.testing.assert_close(got[0], h0.grad, rtol=0, atol=1e-13)
    torch.testing.assert_close(got[1], c0.grad, rtol=0, atol=1e-13)


def test_float32_activations_are_accurate_over_the_whole_range():
    # One step from a zero state with zero weights: the gates are the biases, spread over
    # [-30, 30] (saturation, the polynomial near 0 and the exp-based part of tanh all occur), so
    # c = sigmoid(i) tanh(g) and h = sigmoid(o) tanh(c) test sigmoid and tanh themselves.
    H = 2048
    lstm = nn.LSTM(1, H)
    with torch.no_grad():
        for p in lstm.parameters():
            p.zero_()
        z = torch.linspace(-30.0, 30.0, 4 * H)[torch.randperm(4 * H, generator=torch.Generator().manual_seed(0))]
        lstm.bias_ih_l0.copy_(z)
        zeros = torch.zeros(1, H)
        _, h, c = native.lstm_layer_inference(torch.zeros(1, 1, 1), zeros, zeros, *lstm.parameters())
    i, f, g, o = z.double().view(4, H)
    c_true = torch.sigmoid(i) * torch.tanh(g)
    h_true = torch.sigmoid(o) * torch.tanh(c_true)
    for got, true in ((c[0], c_true), (h[0], h_true)):
        rel = ((got.double() - true).abs() / true.abs()).max().item()
        assert rel <= 1e-6  # float32 rounding of a few operations (PyTorch's own path: ~5e-7 here)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nan_propagates_to_its_own_sequence_only(dtype):
    # A NaN must stay a NaN (TerminateOnNan relies on it), and sequences must not mix.
    model = _model(2, hidden=16, dtype=dtype)
    x = _data(8, 6, dtype=dtype)
    x[3, 2, 0] = float("nan")
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            y, (h, c) = model(x)
        bad = torch.zeros(8, dtype=torch.bool)
        bad[3] = True
        assert torch.isnan(y[3, 2:]).all() and not torch.isnan(y[3, :2]).any()
        assert not torch.isnan(y[~bad]).any()
        assert torch.isnan(h[:, 3]).all() and not torch.isnan(h[:, ~bad]).any()
        assert torch.isnan(c[:, 3]).all()
    with torch.no_grad():
        y_t, _ = model.step(x[:, 2], None)
    assert torch.isnan(y_t[3]).all() and not torch.isnan(y_t[~bad]).any()


def test_built_library_follows_the_umask(tmp_path, monkeypatch):
    source = tmp_path / "tiny.cpp"
    source.write_text('extern "C" int tiny_answer() { return 42; }\n')
    monkeypatch.setenv("IGNITE_LSTM_CACHE", str(tmp_path / "cache"))
    previous = os.umask(0o027)
    try:
        assert build_library(source).tiny_answer() == 42
    finally:
        os.umask(previous)
    built = list((tmp_path / "cache").iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"
    assert stat.S_IMODE(built[0].stat().st_mode) == 0o750  # 0777 & ~umask, as a compiler writes it (mkstemp gave 0710)


def test_isa_avx2_builds_without_avx512(tmp_path, monkeypatch):
    # the macro the kernel's AVX-512 paths test: defined in the native build on an AVX-512
    # machine, never in the avx2 build (which also goes to a file of its own in the cache)
    source = tmp_path / "probe.cpp"
    source.write_text(
        'extern "C" int has_avx512() {\n#ifdef __AVX512F__\nreturn 1;\n#else\nreturn 0;\n#endif\n}\n'
        'extern "C" int has_avx2() {\n#ifdef __AVX2__\nreturn 1;\n#else\nreturn 0;\n#endif\n}\n'
    )
    monkeypatch.setenv("IGNITE_LSTM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("IGNITE_LSTM_ISA", "avx2")
    lib = build_library(source)
    assert lib.has_avx512() == 0
    monkeypatch.setenv("IGNITE_LSTM_ISA", "native")
    native = build_library(source)
    assert len(list((tmp_path / "cache").iterdir())) == 2
    if "avx512f" in Path("/proc/cpuinfo").read_text():
        assert native.has_avx512() == 1
    assert native.has_avx2() == lib.has_avx2()


def test_isa_unknown_value_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("IGNITE_LSTM_ISA", "sse")
    with pytest.raises(ValueError, match="IGNITE_LSTM_ISA should be one of \\['avx2', 'native'\\], got 'sse'"):
        build_library(tmp_path / "none.cpp")
