"""Where the time of the L = 1 paths goes on this CPU (a script, not a test).

Prints the kernel's build time (a fresh build in a temporary cache folder) and the
float32 accuracy of its gate activations against float64 (next to PyTorch's own float32
LSTM on the same gates); then, with one torch thread:

1. the cost per step of one LSTM layer (batch 40, 64 inputs, H = 64) without
   gradients: PyTorch's ``nn.LSTM`` against the native kernel of ``ignite_lstm.models.native``,
   and the kernel's arithmetic rate;
2. the cost of one streaming ``model.step`` at batch 1 (``StatefulLSTM(5 -> 64 x 2)``)
   against the kernel call inside it;
3. the split of one ``fused-detached`` training chunk (250 steps x 40 sequences,
   ``StatefulLSTM(5 -> 64 x 2)``, forward and backward) between the kernel's forward
   pass, its backward pass (on AVX-512 builds with the weight and input gradients) and
   everything else (PyTorch: the read-out, the loss, and on other builds the weight-gradient
   matrix products).

    python benchmarks/profile_kernel.py
"""

from __future__ import annotations

import os
import tempfile
import time

import torch
import torch.nn.functional as F

from ignite_lstm.models.lstm import StatefulLSTM, native
from ignite_lstm.models.native import build as _kernel_build
from ignite_lstm.models.native import loader as _native_lib

B, C, H, IN = 40, 250, 64, 64


def _seconds(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def _timed(name: str, totals: dict):
    inner = getattr(native, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        inner(*args, **kwargs)
        totals[name] = totals.get(name, 0.0) + time.perf_counter() - start

    return wrapper


def _build_seconds() -> float:
    with tempfile.TemporaryDirectory() as folder:
        before = os.environ.get("IGNITE_LSTM_CACHE")
        os.environ["IGNITE_LSTM_CACHE"] = folder
        try:
            start = time.perf_counter()
            _kernel_build.build_library(_native_lib._SOURCE)
            return time.perf_counter() - start
        finally:
            if before is None:
                del os.environ["IGNITE_LSTM_CACHE"]
            else:
                os.environ["IGNITE_LSTM_CACHE"] = before


def _activation_errors() -> dict:
    """Max relative error of c = sigmoid(i) tanh(g) and h = sigmoid(o) tanh(c), gates over [-30, 30]."""
    H = 2048
    lstm = torch.nn.LSTM(1, H)
    with torch.no_grad():
        for p in lstm.parameters():
            p.zero_()
        gen = torch.Generator().manual_seed(0)
        lstm.bias_ih_l0.copy_(torch.linspace(-30.0, 30.0, 4 * H)[torch.randperm(4 * H, generator=gen)])
        i, f, g, o = lstm.bias_ih_l0.double().view(4, H)
        c_true = torch.sigmoid(i) * torch.tanh(g)
        h_true = torch.sigmoid(o) * torch.tanh(c_true)
        zeros, x = torch.zeros(1, H), torch.zeros(1, 1, 1)
        _, h_nat, c_nat = native.lstm_layer_inference(x, zeros, zeros, *lstm.parameters())
        with native.disabled():
            _, (h_pt, c_pt) = lstm(x, (zeros[None], zeros[None]))

    def rel(a, b):
        return ((a.double().flatten() - b).abs() / b.abs()).max().item()

    return {"native": (rel(c_nat, c_true), rel(h_nat, h_true)), "PyTorch": (rel(c_pt, c_true), rel(h_pt, h_true))}


def main() -> None:
    torch.set_num_threads(1)
    if not native.available():
        raise SystemExit("The native kernel is not built here (see the warning above); nothing to profile.")
    print(f"Build of the kernel in an empty cache folder: {_build_seconds():.1f} s")
    for name, (c_err, h_err) in _activation_errors().items():
        print(f"float32 {name:<7} max relative error, gates over [-30, 30]: c {c_err:.1e}, h {h_err:.1e}")
    g = torch.Generator().manual_seed(0)
    lstm = torch.nn.LSTM(IN, H)
    x = torch.randn(C, B, IN, generator=g)
    h = torch.zeros(1, B, H)
    params = [tuple(lstm.parameters())]
    runner = native.stack_runner(lstm, params, (torch.zeros(1, H), None), torch.float32)
    with torch.no_grad():
        t_torch = _seconds(lambda: lstm(x, (h, h)), 20) / C
        t_native = _seconds(lambda: runner.run(x, h, h), 20) / C
    flop = 2 * B * (IN + H) * 4 * H  # gate pre-activations: inputs and previous state
    print(f"One layer, batch {B}, {IN} inputs, H = {H}, no gradients, 1 thread, per step:")
    print(f"  nn.LSTM        {t_torch * 1e6:7.1f} us")
    print(f"  native kernel  {t_native * 1e6:7.1f} us  ({flop / t_native / 1e9:.1f} GFLOP/s with the gates)")

    model = StatefulLSTM(5, H, num_layers=2).eval()
    x1 = torch.randn(1, 1, 5, generator=g)
    state = model.init_state(1)
    layers = [m._flat_weights for m in model.layers]
    stack = native.stack_runner(model, layers, (model.head.weight, model.head.bias), torch.float32)
    with torch.inference_mode():
        t_step = _seconds(lambda: model.step(x1[0], state), 20000)
        t_call = _seconds(lambda: stack.run(x1, *state), 20000)
    print(
        f"Streaming, batch 1, 1 thread: model.step {t_step * 1e6:.1f} us, of which the kernel call "
        f"(with its output tensors) {t_call * 1e6:.1f} us"
    )

    model.train()
    xs = torch.randn(B, C, 5, generator=g)
    ys = torch.randn(B, C, 1, generator=g)
    totals: dict = {}
    real = native._forward, native._backward
    native._forward, native._backward = _timed("_forward", totals), _timed("_backward", totals)
    try:

        def chunk():
            y, _ = model(xs, None, detach_every_step=True)
            F.mse_loss(y, ys).backward()

        chunk()
        totals.clear()
        repeats = 20
        total = _seconds(chunk, repeats)  # the mean of `repeats` calls; totals also hold the warm-up call
    finally:
        native._forward, native._backward = real
    fwd, bwd = (totals.get(k, 0.0) / (repeats + 1) for k in ("_forward", "_backward"))
    print(f"One fused-detached chunk ({C} steps x {B} sequences, 2 layers, 1 thread): {total * 1e3:.1f} ms")
    rest = "PyTorch (read-out, loss)" if native._own_products() else "PyTorch (products, read-out, loss)"
    for name, t in (("kernel forward", fwd), ("kernel backward", bwd), (rest, total - fwd - bwd)):
        print(f"  {name:<36} {t * 1e3:6.1f} ms  {t / total:5.1%}")


if __name__ == "__main__":
    main()
