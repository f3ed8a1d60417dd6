"""Print the README's results table from finished run folders.

    python experiments/summarize.py runs/base-seed0 runs/base-seed1 runs/assignment-seed0

For each run: per-frequency and mean MSE on train and test, test/train ratio, the
number of epochs and the training time (sum of the epochs' training seconds, from
history.json; validation and checkpoints not included).
"""

import json
import sys
from pathlib import Path


def row(run: Path) -> str:
    metrics = json.loads((run / "metrics.json").read_text())
    history = json.loads((run / "history.json").read_text())
    freqs = sorted({k.split("_f", 1)[1] for k in metrics if k.startswith("test/mse_f")}, key=float)
    seconds = sum(e.get("time/epoch_seconds", 0.0) for e in history["epochs"])
    cells = [run.name]
    for split in ("train", "test"):
        cells += [f"{metrics[f'{split}/mse']:.4f}"] + [f"{metrics[f'{split}/mse_f{f}']:.4f}" for f in freqs]
    cells += [f"{metrics['test/mse'] / metrics['train/mse']:.2f}", str(len(history["epochs"])), f"{seconds / 60:.1f}"]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    runs = [Path(p) for p in sys.argv[1:]]
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    freqs = sorted({k.split("_f", 1)[1] for k in metrics if k.startswith("test/mse_f")}, key=float)
    head = ["run"]
    for split in ("train", "test"):
        head += [f"{split} MSE"] + [f"{split} {f} Hz" for f in freqs]
    head += ["test/train", "epochs", "train min"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for run in runs:
        print(row(run))


if __name__ == "__main__":
    main()
