"""What the first epochs of a longer curriculum stage do to a model, under several optimizer settings.

From a training checkpoint written at the end of a stage (``handlers.checkpoint.every=1``), trains
the next stage's length for a few epochs with plain PyTorch (the model and the optimizer state of
the checkpoint, full-window BPTT, batches of ``train.batch_size`` drawn by a seeded permutation, the
gradient clipped to ``train.grad_clip``) and prints each frequency's validation MSE on that length.
The variants differ only in the optimizer: the checkpoint's moments kept or cleared, the clip.

    python experiments/stage_change.py RUN_DIR/checkpoints/epoch_checkpoint_10208.pt 2000 \\
        --variants keep reset clip=0.1 --orders 0 1 2 3 --epochs 24

The checkpoint used in docs/experiments.md (session 7) is epoch 638 of
``python run.py configs/assignment.yaml seed=2 threads=2 handlers.checkpoint.every=1
handlers.checkpoint.n_saved=60`` (the last epoch of its 1,000-step stage, iteration 10,208), on
the processor named there; another processor or thread count reaches another checkpoint.
"""

from __future__ import annotations

import argparse

import torch
from omegaconf import OmegaConf

from ignite_lstm.app.task.dataset import setup_data
from ignite_lstm.app.task.model import setup_model


def _stack(dataset, steps):
    xs, ys = zip(*(dataset[i][:2] for i in range(len(dataset))))
    return torch.stack(xs)[:, :steps], torch.stack(ys)[:, :steps]


def _per_frequency(model, x, y):
    with torch.no_grad():
        out = model(x)[0]
    return [((out[i] - y[i]) ** 2).mean().item() for i in range(x.shape[0])]


def run_variant(checkpoint, cfg, train, val, variant, order, epochs):
    """Train ``epochs`` epochs on ``train`` (x, y) from ``checkpoint``; the MSE per sequence of ``val``."""
    model = setup_model(cfg)
    model.load_state_dict(checkpoint["model"])
    optimizer = torch.optim.Adam(model.parameters())
    lr = checkpoint["optimizer"]["param_groups"][0]["lr"] * cfg.train.curriculum.lr_factor
    if variant != "reset":
        optimizer.load_state_dict(checkpoint["optimizer"])  # the moments of the shorter stage
    for group in optimizer.param_groups:
        group["lr"] = lr
    clip = float(variant.split("=")[1]) if variant.startswith("clip=") else cfg.train.grad_clip
    x, y = train
    g = torch.Generator().manual_seed(order)
    batch = cfg.train.batch_size
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for start in range(0, len(x), batch):
            idx = perm[start : start + batch]
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x[idx])[0], y[idx])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
    return _per_frequency(model, *val)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("steps", type=int, help="the next stage's length")
    parser.add_argument("--variants", nargs="+", default=["keep", "reset", "clip=0.1"])
    parser.add_argument("--orders", nargs="+", type=int, default=[0, 1, 2, 3], help="batch-order seeds")
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    checkpoint = torch.load(args.checkpoint, weights_only=False)
    cfg = OmegaConf.create(checkpoint["config"])
    model = setup_model(cfg)
    model.load_state_dict(checkpoint["model"])
    datasets = setup_data(cfg)["datasets"]  # once: every variant trains on the same arrays
    train, val = _stack(datasets["train"], args.steps), _stack(datasets["val"], args.steps)
    before = " ".join(f"{v:.4f}" for v in _per_frequency(model, *val))
    print(f"before any step on {args.steps} steps: validation MSE per frequency {before}")
    print("| variant | batch order | validation MSE per frequency after", args.epochs, "epochs |")
    print("|---|---|---|")
    for variant in args.variants:
        for order in args.orders:
            mse = run_variant(checkpoint, cfg, train, val, variant, order, args.epochs)
            print(f"| {variant} | {order} | {' '.join(f'{v:.4f}' for v in mse)} |", flush=True)


if __name__ == "__main__":
    main()
