"""Standalone probe for hyper-parameter search on the signal task (plain PyTorch).

Mirrors the engine's fused-window semantics: state reset per sequence, carried
across truncated-BPTT windows, detached at each window boundary, one optimizer
step per window. Used to choose base.yaml before the engine existed; results are
recorded in docs/experiments.md.

    python experiments/probe.py --hidden 128 --window 500 --epochs 40
"""
import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn as nn

FREQS = (1.0, 3.0, 5.0, 7.0)


def make_split(seed, n_mix, s, fs=1000.0, T=10000):
    rng = np.random.default_rng(seed)
    t = np.arange(T) / fs
    xs, ys = [], []
    target = np.stack([np.sin(2 * np.pi * f * t) for f in FREQS])
    for _ in range(n_mix):
        A = rng.uniform(0.8, 1.2, size=(4, T))
        phi = s * rng.uniform(0.0, 2 * np.pi, size=(4, T))
        S = (A * np.sin(2 * np.pi * np.asarray(FREQS)[:, None] * t + phi)).mean(0)
        for k in range(4):
            oh = np.zeros((T, 4))
            oh[:, k] = 1
            xs.append(np.concatenate([S[:, None], oh], 1))
            ys.append(target[k][:, None])
    return torch.tensor(np.stack(xs), dtype=torch.float32), torch.tensor(np.stack(ys), dtype=torch.float32)


class Net(nn.Module):
    def __init__(self, H, layers):
        super().__init__()
        self.lstm = nn.LSTM(5, H, layers, batch_first=True)
        self.head = nn.Linear(H, 1)

    def forward(self, x, state=None):
        h, state = self.lstm(x, state)
        return self.head(h), state


def evaluate(net, x, y):
    with torch.no_grad():
        p, _ = net(x)
    err = ((p - y) ** 2).squeeze(-1).mean(1)  # (N,)
    per = [err[k::4].mean().item() for k in range(4)]
    return float(np.mean(per)), per


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--window", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch", type=int, default=40)
    ap.add_argument("--mixtures", type=int, default=10)
    ap.add_argument("--scale", type=float, default=4.0)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--s", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--tag", default="")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    xtr, ytr = make_split(1, a.mixtures, a.s)
    xte, yte = make_split(2, 1, a.s)
    xtr1, ytr1 = xtr[:4], ytr[:4]
    xtr[..., 0] *= a.scale
    xte[..., 0] *= a.scale
    xtr1 = xtr[:4]
    net = Net(a.hidden, a.layers)
    opt = torch.optim.Adam(net.parameters(), lr=a.lr)
    T = xtr.shape[1]
    nb = math.ceil(len(xtr) / a.batch)
    nw = math.ceil(T / a.window)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=a.epochs * nb * nw)
    t0 = time.time()
    g = torch.Generator().manual_seed(a.seed)
    for ep in range(a.epochs):
        perm = torch.randperm(len(xtr), generator=g)
        for b in range(nb):
            idx = perm[b * a.batch:(b + 1) * a.batch]
            xb, yb = xtr[idx], ytr[idx]
            state = None
            for w in range(nw):
                sl = slice(w * a.window, (w + 1) * a.window)
                p, state = net(xb[:, sl], state)
                loss = ((p - yb[:, sl]) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                if a.clip:
                    nn.utils.clip_grad_norm_(net.parameters(), a.clip)
                opt.step()
                sched.step()
                state = tuple(s.detach() for s in state)
        if (ep + 1) % 10 == 0 or ep == a.epochs - 1:
            m, per = evaluate(net, xte, yte)
            print(f"ep {ep+1} t={time.time()-t0:.0f}s test={m:.4f} per={[round(v,4) for v in per]}", flush=True)
    mtr, ptr = evaluate(net, xtr1, ytr1)
    mte, pte = evaluate(net, xte, yte)
    res = dict(args=vars(a), train=mtr, train_per=ptr, test=mte, test_per=pte, seconds=time.time() - t0)
    print(json.dumps(res), flush=True)
    with open("experiments/probe_results.jsonl", "a") as f:
        f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
