"""Probe behind docs/experiments.md's P1-P4 (session 4): a length curriculum in a plain loop, not the engine.

Full-window BPTT over the first L steps (the same numbers as the engine with
``tbptt_steps = L``, ``update: window``) on the s = 1 data; L doubles when the validation
MSE on the first L steps is below ``thr``. Writes one JSON line every 20 optimizer steps.
The rows of docs/experiments.md (one thread each)::

    python experiments/curriculum_probe.py seed=0 budget=1800                         # P1: input x4
    python experiments/curriculum_probe.py seed=0 scale=1 budget=1800                 # P2
    python experiments/curriculum_probe.py seed=0 scale=1 decay=0.5 budget=1800       # P3 (and seed=1)
    python experiments/curriculum_probe.py seed=1 scale=1 decay=0.5 mix=64 batch=16 budget=1500   # P4

Arguments (key=value): seed, hidden, mix (training mixtures), lr, thr, budget (seconds),
start, factor, layers, scale (input scale), decay (rate factor per stage), batch
(sequences drawn per step; default all), out (the JSON-lines file).
"""

import json
import sys
import time

import torch

from ignite_lstm.app.task.dataset import SignalDataset
from ignite_lstm.app.task.generator import generate_split
from ignite_lstm.models.lstm import StatefulLSTM

args = dict(a.split("=") for a in sys.argv[1:])
seed = int(args.get("seed", 0))
hidden = int(args.get("hidden", 64))
mix = int(args.get("mix", 4))
lr = float(args.get("lr", 3e-3))
thr = float(args.get("thr", 0.01))
budget = float(args.get("budget", 1500))
start = int(args.get("start", 250))
factor = float(args.get("factor", 2))
layers = int(args.get("layers", 1))
out = args.get("out", f"curriculum-probe-{seed}.jsonl")
torch.manual_seed(seed)
common = dict(
    frequencies=[1.0, 3.0, 5.0, 7.0],
    fs=1000.0,
    duration=10.0,
    amplitude_range=(0.8, 1.2),
    phase_scale=1.0,
    noise_sigma=0.0,
)


def ds(split_seed, m):
    s = generate_split(**common, n_mixtures=m, seed=split_seed)
    d = SignalDataset(s.mixture, s.target, input_scale=float(args.get("scale", 4.0)))
    xs, ys = zip(*[d[i][:2] for i in range(len(d))])
    return torch.stack(xs), torch.stack(ys)


xtr, ytr = ds(1, mix)
xva, yva = ds(3, 1)
xte, yte = ds(2, 1)
model = StatefulLSTM(5, hidden, num_layers=layers)
opt = torch.optim.Adam(model.parameters(), lr)


def mse(x, y, L=None):
    with torch.no_grad():
        model.eval()
        p, _ = model(x)
        model.train()
    e = ((p - y) ** 2)[..., 0]
    return (e[:, :L].mean().item() if L else e.mean().item()), e.mean(dim=1).tolist()


L = start
T = xtr.shape[1]
t0 = time.time()
it = 0
f = open(out, "w")
while time.time() - t0 < budget:
    idx = torch.randperm(xtr.shape[0])[: int(args.get("batch", xtr.shape[0]))]
    p, _ = model(xtr[idx, :L])
    loss = ((p - ytr[idx, :L]) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    it += 1
    if it % 20 == 0:
        vL, _ = mse(xva, yva, L)
        rec = dict(t=round(time.time() - t0, 1), it=it, L=L, loss=loss.item(), val_L=vL)
        if it % 100 == 0 or vL < thr:
            te, per = mse(xte, yte)
            rec.update(test_full=te, test_per=per, test_L=mse(xte, yte, L)[0])
        f.write(json.dumps(rec) + "\n")
        f.flush()
        if vL < thr and L < T:
            L = min(T, int(L * factor))
            torch.save(model.state_dict(), out + ".pt")
            for g in opt.param_groups:
                g["lr"] *= float(args.get("decay", 1.0))
        elif vL < thr and L == T:
            break
te, per = mse(xte, yte)
f.write(json.dumps(dict(final=True, t=time.time() - t0, it=it, L=L, test_full=te, test_per=per)) + "\n")
torch.save(model.state_dict(), out + ".pt")
