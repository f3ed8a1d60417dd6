"""Where the time of the fused L = 1 paths goes on this CPU (a script, not a test).

Prints, with one torch thread: the cost per step and layer of the no-gradient recurrence
(``nn.LSTM``) at batch 40 against one matrix product of the same shape and against two
Python-level loops over time, and the ``torch.profiler`` breakdown of one chunk
(250 steps x 40 sequences) of the ``fused-detached`` forward and backward.

    python benchmarks/profile_fused.py
"""

from __future__ import annotations

import time

import torch
from torch.profiler import ProfilerActivity, profile

from ignite_lstm.fused import detached_steps_forward
from ignite_lstm.models import StatefulLSTM

B, C, H, IN = 40, 250, 64, 64


def _us(fn, repeats: int, per: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats / per * 1e6


def main() -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(C, B, IN, generator=g)
    w_ih, w_hh = torch.randn(4 * H, IN, generator=g) * 0.1, torch.randn(4 * H, H, generator=g) * 0.1
    bias = torch.zeros(4 * H)
    h0 = c0 = torch.zeros(B, H)
    lstm = torch.nn.LSTM(IN, H)

    def ops_loop():
        xw = torch.addmm(bias, x.view(C * B, IN), w_ih.t()).view(C, B, 4 * H)
        h, c = h0, c0
        for t in range(C):
            i, f, gg, o = torch.addmm(xw[t], h, w_hh.t()).chunk(4, 1)
            c = f.sigmoid() * c + i.sigmoid() * gg.tanh()
            h = o.sigmoid() * c.tanh()

    def cell_loop():
        h, c = h0, c0
        for t in range(C):
            h, c = torch.lstm_cell(x[t], (h, c), w_ih, w_hh, bias, None)

    with torch.no_grad():
        print(f"One torch thread, batch {B}, hidden {H}, input {IN}; microseconds per step and layer:")
        print(f"  nn.LSTM (oneDNN), no gradient:           {_us(lambda: lstm(x), 5, C):8.1f}")
        a = torch.randn(B, H, generator=g)
        print(f"  one addmm ({B}x{H} @ {H}x{4 * H}) alone:         {_us(lambda: torch.addmm(bias, a, w_hh.t()), 2000, 1):8.1f}")
        print(f"  Python loop: addmm + elementwise ops:    {_us(ops_loop, 5, C):8.1f}")
        print(f"  Python loop: torch.lstm_cell:            {_us(cell_loop, 5, C):8.1f}")

    model = StatefulLSTM(5, H, 2)
    xs = torch.randn(B, C, 5, generator=g)

    def chunk():
        y, _ = detached_steps_forward(model, xs, None)
        y.sum().backward()

    chunk()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            chunk()
    print(f"\nfused-detached, one chunk of {C} steps x {B} sequences, 2 layers, forward + backward (3 chunks):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
