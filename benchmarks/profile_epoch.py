"""Where an epoch of the ``fused-detached`` batch-40 workload goes (a script, not a test).

The workload of ``bench_training.py --efficiency`` (``StatefulLSTM(5 -> 64 x 2 -> 1)``, one batch of
40 sequences x 2,000 steps, ``tbptt_steps=1``, ``update="sequence"``, Adam): one warm-up epoch, then
``--epochs`` epochs, each timed whole and in pieces by ``time.perf_counter`` around the kernel's
two calls (``native._forward``, ``native._backward``), the model's forward, ``backward()``, the
per-step losses, the optimizer step and the engine's chunk loop; with the minor page faults of the
process per epoch (``getrusage``) and its CPU time. The pieces of the median epoch are printed.

    python benchmarks/profile_epoch.py                    # 2 threads, the default chunks
    python benchmarks/profile_epoch.py --threads 1 --chunk-steps 250
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from ignite_lstm.engine import updates
from ignite_lstm.engine.factories import create_trainer
from ignite_lstm.models import native
from ignite_lstm.models.lstm import StatefulLSTM

FLOP_PER_EPOCH = 40 * 2000 * 234_624  # docs/kernel.md: 234,624 FLOP per sequence-step of training


def _timed(owner: Any, name: str, key: str, totals: dict[str, float]) -> None:
    """Replace ``owner.name`` by a wrapper that adds its seconds to ``totals[key]``."""
    inner: Callable = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            totals[key] = totals.get(key, 0.0) + time.perf_counter() - start

    setattr(owner, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--chunk-steps", type=int, default=None, help="create_trainer's chunk_steps (default: none)")
    parser.add_argument("--epochs", type=int, default=9, help="timed epochs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    totals: dict[str, float] = {}
    _timed(native, "_forward", "kernel forward", totals)
    _timed(native, "_backward", "kernel backward", totals)
    _timed(updates.BatchUpdate, "_forward", "model forward (kernel forward included)", totals)
    _timed(torch.Tensor, "backward", "backward() (kernel backward included)", totals)
    _timed(updates.StepLosses, "__call__", "per-step losses", totals)
    _timed(updates.BatchUpdate, "_optimizer_step", "optimizer step", totals)
    _timed(updates.BatchUpdate, "_detached", "the engine's chunk loop", totals)

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 2000, 5, generator=gen), torch.randn(40, 2000, 1, generator=gen)
    torch.manual_seed(0)
    model = StatefulLSTM(5, 64, 2)
    trainer = create_trainer(
        model, torch.optim.Adam(model.parameters(), 1e-3), nn.MSELoss(), chunk_steps=args.chunk_steps
    )
    trainer.run([(x, y)], max_epochs=1)
    walls, cpus, faults, pieces = [], [], [], []
    for _ in range(args.epochs):
        totals.clear()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        wall, cpu = time.perf_counter(), time.process_time()
        trainer.run([(x, y)], max_epochs=1)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        pieces.append(dict(totals))
    median = sorted(range(len(walls)), key=walls.__getitem__)[len(walls) // 2]
    wall = walls[median]
    print(
        f"{native.describe()}, chunk_steps={args.chunk_steps}: epoch median {wall * 1e3:.1f} ms "
        f"({FLOP_PER_EPOCH / wall / 1e9:.0f} GFLOP/s), best {min(walls) * 1e3:.1f} ms; CPU time median "
        f"{statistics.median(cpus) * 1e3:.1f} ms; minor page faults per epoch, median {statistics.median(faults):.0f}"
    )
    for key, seconds in pieces[median].items():
        print(f"  {key:<42} {seconds * 1e3:7.2f} ms")


if __name__ == "__main__":
    main()
