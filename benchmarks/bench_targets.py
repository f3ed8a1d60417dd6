"""Speed of one target per sequence (``targets="last"``) against a target per step (a script, not a test).

Workload: 40 sequences of variable length (half to all of ``--steps`` steps, a fixed seed, the
longest whole), StatefulLSTM(5 -> 64 x 2 layers -> O), one optimizer step per batch. Rows, side
by side in one process and in turn (the median of ``--rounds`` epochs each, after one warm-up
epoch, so that a busy machine slows them alike):

- fast path (``tbptt_steps=1``, ``fused-detached``): float targets with ``nn.MSELoss`` per step
  (B, T, 1) against per sequence (B, 1); class targets with ``nn.CrossEntropyLoss`` (9 classes)
  per step (B, T) against per sequence (B,);
- window path (``tbptt_steps=T``, ``fused``): the class targets, per step against per sequence.

The issue's criterion: "last" at no more than 1.1x the time of per-step targets on the fast path.

    python benchmarks/bench_targets.py                  # 2,000 steps
    python benchmarks/bench_targets.py --steps 500 --rounds 3
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn as nn

from ignite_lstm import StatefulLSTM, create_trainer

SEQUENCES, FEATURES, HIDDEN, LAYERS, CLASSES = 40, 5, 64, 2, 9


def _batch(steps: int, kind: str, targets: str):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SEQUENCES, steps, FEATURES, generator=g)
    lengths = (steps * (0.5 + 0.5 * torch.rand(SEQUENCES, generator=g))).long().clamp(1, steps)
    lengths[0] = steps
    mask = torch.arange(steps)[None, :] < lengths[:, None]
    lead = (SEQUENCES, steps) if targets == "step" else (SEQUENCES,)
    if kind == "float":
        y = torch.randn(*lead, 1, generator=g)
    else:
        y = torch.randint(0, CLASSES, lead, generator=g)
    return x, y, mask


def _seconds(steps: int, kind: str, targets: str, window: int, rounds: int) -> tuple[float, str]:
    torch.manual_seed(0)
    model = StatefulLSTM(FEATURES, HIDDEN, num_layers=LAYERS, output_size=1 if kind == "float" else CLASSES)
    loss = nn.MSELoss() if kind == "float" else nn.CrossEntropyLoss()
    trainer = create_trainer(
        model, torch.optim.Adam(model.parameters(), 1e-3), loss, tbptt_steps=window, targets=targets
    )
    batch = _batch(steps, kind, targets)
    trainer.run([batch], max_epochs=1)  # warm-up: first calls, allocations
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        trainer.run([batch], max_epochs=trainer.state.epoch + 1)
        times.append(time.perf_counter() - start)
    return statistics.median(times), trainer.state.execution


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import warnings

    warnings.simplefilter("ignore")  # the truncation warning of "last" with tbptt_steps=1 is expected here
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, threads {torch.get_num_threads()}")
    print(f"{SEQUENCES} sequences of {args.steps // 2}-{args.steps} steps, median of {args.rounds} epochs (seconds)")
    rows = [("float", 1), ("class", 1), ("class", args.steps)]
    for kind, window in rows:
        step, path = _seconds(args.steps, kind, "step", window, args.rounds)
        last, _ = _seconds(args.steps, kind, "last", window, args.rounds)
        print(
            f"{kind:5s} targets, tbptt_steps={window:<5d} ({path:14s}): per step {step:.3f}, "
            f"last {last:.3f}, ratio {last / step:.2f}"
        )


if __name__ == "__main__":
    main()
