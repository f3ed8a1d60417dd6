"""Speed of the L = 1 training paths, evaluation and streaming (a script, not a test).

Workload (issue 4): 40 sequences x 10,000 steps, StatefulLSTM(5 -> 64 x 2 layers -> 1),
tbptt_steps = 1 (state detached after every step), one optimizer step per batch.
Each configuration runs in its own subprocess so that its peak memory (max RSS) is
its own. "native" rows use the compiled kernel of ``ignite_lstm.models.native``; "pytorch"
rows the same paths on PyTorch's own LSTM code (``IGNITE_LSTM_NATIVE=0``).
The side-by-side rows train, in one process and in turn (best of 3 epochs each, so
that a busy machine slows them alike), the same batches unmasked, with a mask that
leaves the last 0 to 50% of every sequence uncounted (lengths drawn with a fixed
seed, the longest kept whole, so the model steps through the same T steps), and
with a loss function of the user's (not a built-in class) on the same fast path. The
stream rows train, side by side in the same way, the same batches whole and cut into
chunks of ``STREAM_CHUNK`` steps with ``carry_state=True`` (each batch's first chunk
resetting its lanes): "stream" accumulates the chunks' gradients into the batch's one
optimizer step (the same numbers as the whole batch, tests/test_carry_state.py), "stream,
a step per chunk" takes an optimizer step per chunk (stream mode as it is used); on the
tbptt_steps = 1 path and on the fused window path (tbptt_steps = 50, update = window,
where both forms are the same numbers).

The first section ("efficiency", also alone with ``--efficiency``) states the rates as a share of
the machine's arithmetic peak, measured in the same process by the kernel's FMA probe
(``ignite_lstm_fma_peak`` in ``lstm_cpu.cpp``: 12 independent chains of fused multiply-adds
at the widest vector width the build uses, 16 floats with AVX-512, 8 with AVX2; on 1 thread and on
the training's thread count, before every timed round; the highest figure of the run is the
peak, so a busy machine lowers the shares rather than raises them). It times, in one process and
in turn (median of ``--rounds`` epochs each), the ``fused-detached`` training of the workload below at
batch 8 and 40 (40 sequences x ``--efficiency-steps`` steps, 2,000 by default) and the per-step
loop (``execution="stepwise"``) at batch 8, the same epochs timed the same way; then evaluation
(batch 40), ``native.step_many`` (1,024 lanes, one step per call) and ``model.step`` (batch 1,
1 thread). FLOP counted (multiply-adds of the matrix products, 2 FLOP each; activations, the loss
and the optimizer not counted), per sequence-step of ``StatefulLSTM(5 -> 64 x 2 -> 1)``:

- forward: layer 1 (5 + 64) x 256 = 17,664, layer 2 (64 + 64) x 256 = 32,768, read-out 64:
  50,496 multiply-adds (evaluation, ``step_many`` and ``model.step``: 100,992 FLOP);
- backward with the state detached after every step: the weight gradients of both layers
  (17,664 + 32,768) and layer 2's input gradient 256 x 64 = 16,384: 66,816 multiply-adds (the
  read-out's 128 and layer 1's input gradient, which nothing asks for, are not counted);
- training: 2 x (50,496 + 66,816) = 234,624 FLOP per sequence-step.

The GRU rows run ``StatefulGRU(5 -> 64 x 2 -> 1)`` (``ignite_lstm.models.gru``, 3 gates instead of 4) on the same
workload: forward 13,248 + 24,576 + 64 = 37,888 multiply-adds, backward 37,824 + 12,288 = 50,112,
training 176,000 FLOP per sequence-step.

The AVX2 figures on an AVX-512 machine: build the kernel without AVX-512 through a compiler
wrapper and keep MKL on its AVX2 code (docs/kernel.md)::

    printf '#!/bin/sh\nexec g++ "$@" -mno-avx512f\n' > /tmp/cxx-avx2 && chmod +x /tmp/cxx-avx2
    CXX=/tmp/cxx-avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 python benchmarks/bench_training.py --efficiency

    python benchmarks/bench_training.py                # everything (several minutes)
    python benchmarks/bench_training.py --quick        # 1,000 steps per sequence
    python benchmarks/bench_training.py --efficiency   # the efficiency section only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

SEQUENCES, FEATURES, HIDDEN, LAYERS = 40, 5, 64, 2
STREAM_CHUNK = 250  # steps per chunk of the stream rows (the app's default train.chunk_steps)
STREAM_ROUNDS = 7  # epochs per variant of the stream rows, the best kept: their differences are small


def _data(steps: int):
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(SEQUENCES, steps, FEATURES, generator=g)
    y = torch.randn(SEQUENCES, steps, 1, generator=g)
    return x, y


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _mask(steps: int):
    import torch

    g = torch.Generator().manual_seed(1)
    lengths = (steps * (0.5 + 0.5 * torch.rand(SEQUENCES, generator=g))).long().clamp(1, steps)
    lengths[0] = steps
    return torch.arange(steps)[None, :] < lengths[:, None]  # (SEQUENCES, steps)


def _user_mse(y_pred, y):
    return ((y_pred - y) ** 2).mean()


def _stream(batches: list, steps: int) -> list:
    """Each (x, y) batch as consecutive chunks of STREAM_CHUNK steps, its first chunk resetting every lane."""
    import torch

    chunks = []
    for x, y in batches:
        for start in range(0, steps, STREAM_CHUNK):
            reset = torch.full((x.shape[0],), start == 0)
            chunks.append(
                {"x": x[:, start : start + STREAM_CHUNK], "y": y[:, start : start + STREAM_CHUNK], "reset": reset}
            )
    return chunks


def _trainer_and_batches(
    engine: str,
    batch: int,
    steps: int,
    variant: str,
    tbptt_steps: int = 1,
    update: str = "sequence",
    cell: str = "lstm",
):
    import torch
    import torch.nn as nn

    from ignite_lstm.engine.factories import create_trainer

    torch.manual_seed(0)
    x, y = _data(steps)
    mask = _mask(steps)
    batches = [
        (x[i : i + batch], y[i : i + batch]) + ((mask[i : i + batch],) if variant == "masked" else ())
        for i in range(0, SEQUENCES, batch)
    ]
    stream = variant.startswith("stream")
    extra = {"carry_state": True} if stream else {}
    if variant == "stream" and update == "sequence":  # the chunks' gradients in the batch's one step
        extra["gradient_accumulation_steps"] = -(-steps // STREAM_CHUNK)
    if stream:
        batches = _stream(batches, steps)
    model = _model(cell)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    loss_fn = _user_mse if variant == "custom-loss" else nn.MSELoss()
    trainer = create_trainer(
        model, optimizer, loss_fn, tbptt_steps=tbptt_steps, update=update, execution=engine, **extra
    )
    trainer.run(batches[:1], max_epochs=1)  # warm-up: allocator, oneDNN primitives
    return trainer, batches


def _model(cell: str):
    from ignite_lstm.models.gru import StatefulGRU
    from ignite_lstm.models.lstm import StatefulLSTM

    return (StatefulGRU if cell == "gru" else StatefulLSTM)(FEATURES, HIDDEN, LAYERS)


def _epoch_seconds(trainer, batches) -> float:
    start = time.perf_counter()
    trainer.run(batches, max_epochs=1)
    return time.perf_counter() - start


def worker_train(engine: str, batch: int, steps: int, threads: int | None) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    trainer, batches = _trainer_and_batches(engine, batch, steps, "plain")
    seconds = _epoch_seconds(trainer, batches)
    return {"seconds": seconds, "peak_mib": _peak_mib(), "execution": trainer.execution}


def worker_compare(
    engine: str,
    batch: int,
    steps: int,
    threads: int | None,
    variants: str,
    tbptt_steps: int = 1,
    update: str = "sequence",
    rounds: int = 3,
) -> dict:
    """Epochs of several variants in turn in one process, best of ``rounds`` each: noise on a shared machine hits
    all alike."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    runs = {v: _trainer_and_batches(engine, batch, steps, v, tbptt_steps, update) for v in variants.split(",")}
    best = {v: float("inf") for v in runs}
    for _ in range(rounds):
        for v in runs:
            best[v] = min(best[v], _epoch_seconds(*runs[v]))
    return {"seconds": best, "execution": {v: t.execution for v, (t, _) in runs.items()}}


def worker_eval(steps: int, threads: int | None) -> dict:
    import torch

    from ignite_lstm.engine.factories import create_evaluator
    from ignite_lstm.models.lstm import StatefulLSTM

    if threads:
        torch.set_num_threads(threads)
    x, y = _data(steps)
    model = StatefulLSTM(FEATURES, HIDDEN, LAYERS)
    evaluator = create_evaluator(model, {})
    evaluator.run([(x[:8], y[:8])])
    start = time.perf_counter()
    evaluator.run([(x, y)])
    seconds = time.perf_counter() - start
    return {"steps_per_s": SEQUENCES * steps / seconds, "seconds": seconds, "peak_mib": _peak_mib()}


def worker_stream(samples: int) -> dict:
    import torch

    from ignite_lstm.models.lstm import StatefulLSTM

    torch.set_num_threads(1)
    model = StatefulLSTM(FEATURES, HIDDEN, LAYERS).eval()
    x = torch.randn(samples, 1, FEATURES)
    with torch.inference_mode():
        state = None
        for t in range(200):
            _, state = model.step(x[t], state)
        state = None
        start = time.perf_counter()
        for t in range(samples):
            _, state = model.step(x[t], state)
        seconds = time.perf_counter() - start
        # Baseline: the same weights' stack called as a plain nn.LSTM on a length-1 sequence.
        lstm = torch.nn.LSTM(FEATURES, HIDDEN, LAYERS, batch_first=True).eval()
        state = None
        start = time.perf_counter()
        for t in range(samples):
            out, state = lstm(x[t].unsqueeze(1), state)
            model.head(out)
        baseline = time.perf_counter() - start
    return {"us_per_sample": seconds / samples * 1e6, "nn_lstm_us_per_sample": baseline / samples * 1e6}


FORWARD_MACS = (FEATURES + HIDDEN) * 4 * HIDDEN + (HIDDEN + HIDDEN) * 4 * HIDDEN + HIDDEN  # 50,496
BACKWARD_MACS = (FEATURES + HIDDEN) * 4 * HIDDEN + (HIDDEN + HIDDEN) * 4 * HIDDEN + 4 * HIDDEN * HIDDEN  # 66,816
TRAIN_FLOP = 2 * (FORWARD_MACS + BACKWARD_MACS)  # 234,624 per sequence-step
GRU_FORWARD_MACS = (FEATURES + HIDDEN) * 3 * HIDDEN + (HIDDEN + HIDDEN) * 3 * HIDDEN + HIDDEN  # 37,888
GRU_BACKWARD_MACS = (FEATURES + HIDDEN) * 3 * HIDDEN + (HIDDEN + HIDDEN) * 3 * HIDDEN + 3 * HIDDEN * HIDDEN  # 50,112
GRU_TRAIN_FLOP = 2 * (GRU_FORWARD_MACS + GRU_BACKWARD_MACS)  # 176,000
MANY_LANES = 1024  # lanes of the native.step_many row
PROBE_ITERS = 5_000_000  # about 10 ms per probe at 2 x 16-wide FMAs per cycle


def _wall_and_cpu(fn, repeats: int = 1) -> tuple[float, float]:
    """Seconds of wall clock and of this process's CPU time (all its threads) per call of ``fn``."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - wall) / repeats, (time.process_time() - cpu) / repeats


def worker_efficiency(steps: int, threads: int | None, rounds: int) -> dict:
    """The efficiency section's timings and FMA probes, in one process (see the module docstring)."""
    import statistics

    import torch

    from ignite_lstm.engine.factories import create_evaluator
    from ignite_lstm.models.lstm import StatefulLSTM, native
    from ignite_lstm.models.native import loader as _native_lib

    if threads:
        torch.set_num_threads(threads)
    n = torch.get_num_threads()
    lib = _native_lib.library()
    describe = native.describe()
    probes: dict[str, list[float]] = {"1": [], str(n): [], "core": []}

    def probe() -> None:
        for t in (1, n):
            probes[str(t)].append(lib.ignite_lstm_fma_peak(t, PROBE_ITERS, 0) / 1e9)
        probes["core"].append(lib.ignite_lstm_fma_peak(1, PROBE_ITERS, 1) / 1e9)  # per second of the thread's CPU

    timed: dict[str, list[tuple[float, float]]] = {}

    def record(key: str, fn, repeats: int = 1) -> None:
        timed.setdefault(key, []).append(_wall_and_cpu(fn, repeats))

    runs = {
        f"{cell}-{engine}-{b}": _trainer_and_batches(engine, b, steps, "plain", cell=cell)
        for cell in ("lstm", "gru")
        for engine, b in (("fused", 8), ("fused", 40), ("stepwise", 8))
    }
    x, y = _data(steps)
    evaluators = {cell: create_evaluator(_model(cell), {}) for cell in ("lstm", "gru")}
    for evaluator in evaluators.values():
        evaluator.run([(x[:8, :50], y[:8, :50])])
    model = StatefulLSTM(FEATURES, HIDDEN, LAYERS).eval()
    lanes, state = torch.randn(MANY_LANES, FEATURES), [None]

    def many() -> None:
        _, state[0] = native.step_many(model, lanes, state[0])

    for _ in range(rounds):
        probe()
        for key, (trainer, batches) in runs.items():
            record(key, lambda trainer=trainer, batches=batches: trainer.run(batches, max_epochs=1))
        for cell, evaluator in evaluators.items():
            record(f"eval-{cell}", lambda evaluator=evaluator: evaluator.run([(x, y)]))
        with torch.inference_mode():
            many()
            record("step_many", many, 100)
    torch.set_num_threads(1)
    samples, one = 5000, [None]

    def step(t=[0]) -> None:  # noqa: B006 - the sample counter
        _, one[0] = model.step(x[:1, t[0] % steps], one[0])
        t[0] += 1

    with torch.inference_mode():
        for _ in range(rounds):
            probe()
            record("step", step, samples)
    execution = {key: trainer.execution for key, (trainer, _) in runs.items()}
    return {
        "threads": n,
        "describe": describe,
        "width": lib.ignite_lstm_vector_width(),
        "execution": execution,
        "peak": {t: max(v) for t, v in probes.items()},
        "peak_median": {t: statistics.median(v) for t, v in probes.items()},
        "wall": {k: statistics.median(w for w, _ in v) for k, v in timed.items()},
        "cpu": {k: statistics.median(c for _, c in v) for k, v in timed.items()},
    }


def _efficiency_rows(steps: int, th: str, rounds: int) -> None:
    r = _run(["efficiency", str(steps), str(rounds), th])
    n = r["threads"]
    peak, peak1, core = r["peak"][str(n)], r["peak"]["1"], r["peak"]["core"]
    print(
        f"  efficiency ({r['describe']}; FLOP per sequence-step: training {TRAIN_FLOP:,}, forward "
        f"{2 * FORWARD_MACS:,}; median of {rounds} rounds, in one process)"
    )
    print(
        f"    FMA peak ({r['width']} floats wide): {peak:.0f} GFLOP/s on {n} thread{'s' * (n > 1)}, {peak1:.0f} on 1; "
        f"per second of "
        f"CPU time {core:.0f} (the best probes of the run; medians {r['peak_median'][str(n)]:.0f}, "
        f"{r['peak_median']['1']:.0f}, {r['peak_median']['core']:.0f})"
    )
    print(
        "    rates: wall clock (share of the peak on the thread count used) | per second of the process's CPU time, "
        "all threads (share of a core's peak; a busy machine slows the wall clock far more)"
    )

    def row(label: str, key: str, flop: float, peak_wall: float, unit: str = "s/epoch") -> None:
        wall, cpu = r["wall"][key], r["cpu"][key]
        shown = f"{wall:8.3f} s/epoch" if unit == "s/epoch" else f"{wall * 1e6:8.1f} us"
        print(
            f"    {label}: {shown}, {flop / wall / 1e9:6.1f} GFLOP/s {flop / wall / 1e9 / peak_wall:6.1%} | "
            f"{flop / cpu / 1e9:6.1f} GFLOP/s {flop / cpu / 1e9 / core:6.1%}",
            flush=True,
        )

    for cell, train_flop, fwd in (("lstm", TRAIN_FLOP, FORWARD_MACS), ("gru", GRU_TRAIN_FLOP, GRU_FORWARD_MACS)):
        for engine, batch in (("fused", 8), ("fused", 40), ("stepwise", 8)):
            key = f"{cell}-{engine}-{batch}"
            row(
                f"{cell.upper():<4} train {r['execution'][key]:<14} batch {batch:>2}, {SEQUENCES} x {steps} steps",
                key,
                SEQUENCES * steps * train_flop,
                peak,
            )
        for clock in ("wall", "cpu"):
            ratio = r[clock][f"{cell}-stepwise-8"] / r[clock][f"{cell}-fused-8"]
            print(
                f"    {cell.upper():<4} fast path vs the per-step loop at batch 8 (same epochs, timed the same way, "
                f"{clock}): {ratio:.1f}x"
            )
        row(
            f"{cell.upper():<4} evaluation batch 40 ({SEQUENCES * steps / r['wall'][f'eval-{cell}']:,.0f} "
            f"sequence-steps/s)",
            f"eval-{cell}",
            SEQUENCES * steps * 2 * fwd,
            peak,
            "us",
        )
    row(
        f"native.step_many, {MANY_LANES} lanes, per call ({MANY_LANES / r['wall']['step_many']:,.0f} lane-steps/s)",
        "step_many",
        MANY_LANES * 2 * FORWARD_MACS,
        peak,
        "us",
    )
    row("model.step batch 1, 1 thread, per sample", "step", 2 * FORWARD_MACS, peak1, "us")


def _window(args: list[str]) -> tuple:
    """``[tbptt_steps, update, rounds]`` of a compare worker's command line, or nothing (the defaults)."""
    return (int(args[0]), args[1], int(args[2])) if args else ()


def _stream_rows(steps: int, th: str) -> None:
    """Stream mode (chunks with carry_state) against whole-sequence batches, per step, batch 40."""
    print(
        f"  stream mode: the batches cut into chunks of {STREAM_CHUNK} steps with carry_state=True, against the "
        f"whole sequences (best of {STREAM_ROUNDS} epochs each, in one process), batch 40"
    )
    cases = [
        ("fused", "1", "sequence", "native"),
        ("fused", "1", "sequence", "pytorch"),
        ("fused", "50", "window", "native"),
    ]
    for engine, tbptt, update, kernel in cases:
        variants = "plain,stream,stream-step" if update == "sequence" else "plain,stream"
        r = _run(["compare", engine, "40", str(steps), variants, tbptt, update, str(STREAM_ROUNDS), th], kernel)
        sec, path = r["seconds"], r["execution"]["stream"]
        per_step = {v: s / (SEQUENCES * steps) * 1e6 for v, s in sec.items()}  # us per sequence-step
        line = (
            f"    tbptt_steps={tbptt:<2} {update:<8} {kernel:<7} ({path:<14}): whole {per_step['plain']:5.2f}, "
            f"stream {per_step['stream']:5.2f} ({sec['stream'] / sec['plain']:.2f}x)"
        )
        if "stream-step" in sec:
            ratio = sec["stream-step"] / sec["plain"]
            line += f", stream a step per chunk {per_step['stream-step']:5.2f} ({ratio:.2f}x)"
        line += " us per sequence-step"
        print(line, flush=True)


def _run(args: list[str], kernel: str = "native") -> dict:
    env = dict(os.environ, IGNITE_LSTM_NATIVE="1" if kernel == "native" else "0")
    out = subprocess.run(
        [sys.executable, __file__, "--worker", *args], capture_output=True, text=True, check=True, env=env
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 steps per sequence instead of 10,000")
    parser.add_argument("--steps", type=int, default=None, help="steps per sequence (overrides --quick)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for training/evaluation")
    parser.add_argument("--skip-stepwise-40", action="store_true", help="skip the stepwise batch-40 run")
    parser.add_argument("--efficiency", action="store_true", help="only the efficiency section (shares of the peak)")
    parser.add_argument("--efficiency-steps", type=int, default=2000, help="steps per sequence of that section")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds of that section (the median is shown)")
    parser.add_argument("--skip-targets", action="store_true", help="skip the targets='last' rows (bench_targets.py)")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, *rest = args.worker
        threads = int(rest[-1]) if rest and rest[-1] != "None" else None
        if kind == "train":
            result = worker_train(rest[0], int(rest[1]), int(rest[2]), threads)
        elif kind == "compare":
            result = worker_compare(rest[0], int(rest[1]), int(rest[2]), threads, rest[3], *_window(rest[4:-1]))
        elif kind == "efficiency":
            result = worker_efficiency(int(rest[0]), threads, int(rest[1]))
        elif kind == "eval":
            result = worker_eval(int(rest[0]), threads)
        else:
            result = worker_stream(int(rest[0]))
        print(json.dumps(result))
        return

    steps = args.steps or (1000 if args.quick else 10000)
    th = str(args.threads)
    import torch

    print(
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads by default"
    )
    print(
        f"Workload: {SEQUENCES} sequences x {steps} steps, LSTM {FEATURES}->{HIDDEN}x{LAYERS}, "
        f"tbptt_steps=1, update=sequence"
    )
    _efficiency_rows(args.efficiency_steps, th, args.rounds)
    if args.efficiency:
        return
    rows = {}
    for batch in (8, 40):
        for engine, kernel in (("stepwise", "pytorch"), ("fused", "native"), ("fused", "pytorch")):
            if engine == "stepwise" and batch == 40 and args.skip_stepwise_40:
                continue
            r = rows[(engine, kernel, batch)] = _run(["train", engine, str(batch), str(steps), th], kernel)
            print(
                f"  train {engine:<8} {kernel:<7} ({r['execution']:<14}) batch {batch:>2}: {r['seconds']:8.2f} s/epoch, "
                f"peak {r['peak_mib']:7.0f} MiB",
                flush=True,
            )
    for batch in (8, 40):
        if ("stepwise", "pytorch", batch) in rows:
            base = rows[("stepwise", "pytorch", batch)]["seconds"]
            print(
                f"  speed-up over stepwise at batch {batch}: fused native "
                f"{base / rows[('fused', 'native', batch)]['seconds']:.1f}x, fused pytorch "
                f"{base / rows[('fused', 'pytorch', batch)]['seconds']:.1f}x"
            )
    ratio8 = rows[("stepwise", "pytorch", 8)]["seconds"] / rows[("fused", "native", 40)]["seconds"]
    print(f"  fused native batch 40 vs stepwise batch 8: {ratio8:.1f}x")
    print(
        "  side by side in one process (best of 3 epochs each), batch 40: unmasked, masked (the last 0-50% of "
        "each sequence uncounted), a loss function of the user's"
    )
    for kernel in ("native", "pytorch"):
        r = _run(["compare", "fused", "40", str(steps), "plain,masked,custom-loss", th], kernel)
        sec, path = r["seconds"], r["execution"]["custom-loss"]
        print(
            f"    train fused    {kernel:<7} ({path:<14}): unmasked {sec['plain']:7.2f} s/epoch, masked "
            f"{sec['masked']:7.2f} s/epoch ({sec['masked'] / sec['plain']:.2f}x), custom loss "
            f"{sec['custom-loss']:7.2f} s/epoch ({sec['custom-loss'] / sec['plain']:.2f}x)",
            flush=True,
        )
    _stream_rows(steps, th)
    for kernel in ("native", "pytorch"):
        ev = _run(["eval", str(steps), th], kernel)
        print(
            f"  evaluation {kernel:<7} (batch 40): {ev['steps_per_s']:11,.0f} sequence-steps/s, "
            f"peak {ev['peak_mib']:.0f} MiB",
            flush=True,
        )
    for kernel in ("native", "pytorch"):
        st = _run(["stream", "20000"], kernel)
        print(
            f"  streaming model.step {kernel:<7} batch 1, 1 thread: {st['us_per_sample']:6.1f} us/sample "
            f"(a plain nn.LSTM call per step: {st['nn_lstm_us_per_sample']:.1f} us/sample)",
            flush=True,
        )
    if not args.skip_targets:  # one target per sequence against one per step (issue 22's criterion: <= 1.1x)
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_targets.py")
        print("  targets='last' against per-step targets (benchmarks/bench_targets.py):", flush=True)
        subprocess.run([sys.executable, script, "--steps", str(min(steps, 2000)), "--rounds", "3"], check=True)


if __name__ == "__main__":
    main()
