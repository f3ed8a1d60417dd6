"""Epoch time of data-parallel training on the CPU: one process against two gloo processes.

Runs the same command twice in a scratch folder, the second time on 2 processes:

    python run.py configs/quick.yaml train.epochs=E threads=N ...
    python run.py configs/quick.yaml train.epochs=E threads=N/2 distributed.backend=gloo distributed.nproc_per_node=2

and reads each epoch's training time from the run's history.json (``time/epoch_seconds``:
validation and checkpoints excluded); it prints the median over the epochs after the first
(warm-up). Both runs use the same CPU threads in all (``--threads``, split between the
processes) and the same global batch, so the two processes each train on half of it. Run it
on a quiet machine: OpenMP threads that wait for a busy core slow a multi-threaded process
down by orders of magnitude (``--threads-per-process 1`` avoids that).

    python benchmarks/bench_distributed.py                               # quick preset, 6 epochs
    python benchmarks/bench_distributed.py --epochs 2 --duration 0.2     # a smoke check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(folder: Path, processes: int, threads: int, overrides: list[str]) -> dict:
    args = [
        sys.executable,
        str(REPO / "run.py"),
        str(REPO / "configs" / "quick.yaml"),
        f"name=p{processes}",
        f"threads={threads}",
        f"output_dir={folder / 'runs'}",
        f"data.dir={folder / 'data'}",
        "eval.report=false",
        "handlers.progress_bar=false",
        *overrides,
    ]
    if processes > 1:
        args += ["distributed.backend=gloo", f"distributed.nproc_per_node={processes}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    done = subprocess.run(args, cwd=folder, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"run.py on {processes} process(es) failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    run_dir = folder / "runs" / f"p{processes}"
    epochs = json.loads((run_dir / "history.json").read_text())["epochs"]
    seconds = [e["time/epoch_seconds"] for e in epochs]
    timed = sorted(seconds[1:] or seconds)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        "median": statistics.median(timed),
        "min": timed[0],
        "wall": wall,
        "epochs": len(seconds),
        "train_loss": epochs[-1]["train/loss"],
        "val_mse": metrics["val/mse"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6, help="epochs per run (default 6; the first is not timed)")
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count(),
        help="CPU threads in all, split between the processes (default: all CPUs)",
    )
    parser.add_argument(
        "--threads-per-process",
        type=int,
        default=None,
        metavar="N",
        help="give every process N threads instead (e.g. 1: one core per process)",
    )
    parser.add_argument("--duration", type=float, default=None, help="data.duration override (seconds per sequence)")
    parser.add_argument("--hidden", type=int, default=None, help="model.hidden_size override")
    parser.add_argument("--set", nargs="*", default=[], metavar="key=value", help="further run.py overrides")
    args = parser.parse_args()
    overrides = [f"train.epochs={args.epochs}", *args.set]
    if args.duration is not None:
        overrides.append(f"data.duration={args.duration}")
    if args.hidden is not None:
        overrides.append(f"model.hidden_size={args.hidden}")
    if args.threads_per_process is None and args.threads < 2:
        sys.exit("--threads should be at least 2 (one per process).")

    import torch

    print(
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"load average {os.getloadavg()[0]:.2f} at the start (other work on the machine skews the figures)"
    )
    print(f"Workload: configs/quick.yaml {' '.join(overrides)} (global batch unchanged)")
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as scratch:
        folder = Path(scratch)
        rows = {}
        for processes in (1, 2):
            threads = args.threads_per_process or args.threads // processes
            rows[processes] = r = _run(folder, processes, threads, overrides)
            print(
                f"  {processes} process{'es' if processes > 1 else '  '} x {threads:>2} threads: "
                f"{r['median']:7.3f} s/epoch (median of epochs 2-{r['epochs']}, min {r['min']:.3f}), "
                f"whole command {r['wall']:6.1f} s, final train loss {r['train_loss']:.5f}, "
                f"val mse {r['val_mse']:.5f}",
                flush=True,
            )
    print(f"  epoch time, 2 processes against 1: {rows[2]['median'] / rows[1]['median']:.2f}x (below 1 is faster)")


if __name__ == "__main__":
    main()
