"""Streaming latency of the exported step on onnxruntime next to the PyTorch step (a script, not a test).

Model: StatefulLSTM(5 -> 64 x 2 layers -> 1) (bench_training.py's), batch 1, one thread,
the state fed back after every sample. Rows, all in this one process:

- ``model.step``, native kernel: what ``ignite-lstm extract`` runs;
- ``model.step``, PyTorch code (``native.disabled()``: ``torch.lstm_cell`` per layer);
- a plain ``nn.LSTM`` call on a length-1 sequence per step, plus the read-out;
- onnxruntime, CPU provider, ``OnnxStep.run`` on numpy arrays (the exported step);
- onnxruntime through ``OnnxStep.step`` on torch tensors (``extract --backend onnxruntime``).

Each row is measured in ``--rounds`` interleaved rounds of ``--samples`` steps after a
warm-up; the median round is printed, in microseconds per sample, with its ratio to the
native step. Needs the ``export`` extra (pinned in requirements.txt).

    python benchmarks/bench_export.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

FEATURES, HIDDEN, LAYERS = 5, 64, 2


def _machine() -> str:
    name, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    isa = ", ".join(n for f, n in (("avx512f", "AVX-512"), ("amx_tile", "AMX"), ("avx2", "AVX2")) if f in flags)
    return f"{name} ({isa or 'no AVX-512/AVX2 flags'}), {os.cpu_count()} CPUs"


def _loop(step, x, state) -> float:
    start = time.perf_counter()
    for x_t in x:
        state = step(x_t, state)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=4000, help="steps per round (default 4000)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per row (default 5)")
    args = parser.parse_args()

    import onnxruntime

    from ignite_lstm.app.export import export_onnx
    from ignite_lstm.deploy.onnx_step import OnnxStep
    from ignite_lstm.models import native
    from ignite_lstm.models.lstm import StatefulLSTM

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = StatefulLSTM(FEATURES, HIDDEN, LAYERS).eval()
    lstm = torch.nn.LSTM(FEATURES, HIDDEN, LAYERS, batch_first=True).eval()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        proto = export_onnx(model, Path(tmp) / "step.onnx", frequencies=[1.0, 3.0, 5.0, 7.0], input_scale=4.0)
        export_seconds = time.perf_counter() - start
        onnx_step = OnnxStep(Path(tmp) / "step.onnx", threads=1)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))

    print(
        f"Machine: {_machine()}, load average {os.getloadavg()[0]:.2f} at the start "
        f"(other work on the machine skews the figures)"
    )
    print(
        f"torch {torch.__version__} (1 thread), onnxruntime {onnxruntime.__version__} (CPU provider, 1 thread); "
        f"LSTM kernel: {native.describe()}"
    )
    print(
        f"Model: StatefulLSTM({FEATURES} -> {HIDDEN} x {LAYERS} -> 1), batch 1; export {export_seconds:.1f} s "
        f"(torch.onnx.export dynamo=True, opset {opset}); median of {args.rounds} rounds x {args.samples} samples"
    )

    x = torch.randn(args.samples, 1, FEATURES, generator=torch.Generator().manual_seed(1))
    x_np = [np.ascontiguousarray(x_t.numpy()) for x_t in x]

    def native_step(x_t, state):
        return model.step(x_t, state)[1]

    def torch_step(x_t, state):
        with native.disabled():
            return model.step(x_t, state)[1]

    def nn_lstm(x_t, state):
        out, state = lstm(x_t.unsqueeze(1), state)
        model.head(out)
        return state

    def ort_run(x_t, state):
        return onnx_step.run(x_t, *state)[1:]

    def ort_step(x_t, state):
        return onnx_step.step(x_t, state)[1]

    rows = {  # name -> (step, inputs, initial state)
        "model.step, native kernel": (native_step, x, None),
        "model.step, PyTorch (torch.lstm_cell)": (torch_step, x, None),
        "nn.LSTM call per step (length 1)": (nn_lstm, x, None),
        "onnxruntime, OnnxStep.run (numpy)": (ort_run, x_np, onnx_step.init_state()),
        "onnxruntime, OnnxStep.step (torch in/out)": (ort_step, x, None),
    }
    times: dict[str, list[float]] = {name: [] for name in rows}
    with torch.inference_mode():
        for step, inputs, state in rows.values():
            _loop(step, inputs[:500], state)  # warm-up: allocator, oneDNN primitives, ORT arena
        for _ in range(args.rounds):
            for name, (step, inputs, state) in rows.items():
                times[name].append(_loop(step, inputs, state) / args.samples * 1e6)
    base = statistics.median(times["model.step, native kernel"])
    for name, values in times.items():
        us = statistics.median(values)
        print(
            f"  {name:<44} {us:7.1f} us/sample  ({us / base:4.2f}x the native step; "
            f"rounds {min(values):.1f}-{max(values):.1f})"
        )


if __name__ == "__main__":
    main()
