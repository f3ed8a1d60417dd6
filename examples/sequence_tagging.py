"""Sequence tagging: a class label at every step of variable-length sequences.

The data (made here, with a fixed seed): sequences of 8 to 40 symbols from {a, b, c}; the tag of
step t is (number of a's - number of b's up to t) mod 3, a three-state automaton that the model
can only follow by carrying its state through the whole sequence. The first step's tag is left
out of the loss and the metrics with ``ignore_index`` (-100), as a tagger leaves out a token.

The library does the sequence work: ``collate_sequences`` pads each batch (the tags to (B, T)
class indices) and builds its mask, ``nn.CrossEntropyLoss(ignore_index=-100)`` is passed as it
is and receives the counted steps as (N, 3) logits and (N,) tags, and Ignite's ``Accuracy()``
sees the counted steps only (padding never counts; the NaN the padding holds here changes
nothing). The accuracy reported is over every counted step of the test sequences; a model that
ignored the history would score about 33%.

Run: ``python examples/sequence_tagging.py [EPOCHS]`` (default 12).
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn as nn
from ignite.metrics import Accuracy
from torch.utils.data import DataLoader

from ignite_lstm import StatefulLSTM, collate_sequences, create_evaluator, create_trainer

IGNORE = -100


def tagged(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """n sequences (x (T, 3) one-hot symbols, tags (T,) int64 in 0..2, the first IGNORE)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        steps = int(torch.randint(8, 41, (1,), generator=gen))
        symbols = torch.randint(0, 3, (steps,), generator=gen)
        score = torch.cumsum((symbols == 0).long() - (symbols == 1).long(), 0)
        tags = torch.remainder(score, 3)
        tags[0] = IGNORE
        out.append((nn.functional.one_hot(symbols, 3).float(), tags))
    return out


def main(epochs: int = 12) -> float:
    torch.manual_seed(0)
    train, test = tagged(2000, seed=1), tagged(500, seed=2)
    pad = lambda items: collate_sequences(items, padding_value=float("nan"))  # noqa: E731  (padding never counts)
    loader = DataLoader(train, batch_size=32, shuffle=True, collate_fn=pad, generator=torch.Generator().manual_seed(0))
    model = StatefulLSTM(3, 32, output_size=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    trainer = create_trainer(model, optimizer, nn.CrossEntropyLoss(ignore_index=IGNORE), tbptt_steps=40)

    def counted(output):  # Accuracy knows no ignore_index: leave those steps out as the loss does
        keep = output["y"] != IGNORE
        return output["y_pred"][keep], output["y"][keep]

    evaluator = create_evaluator(model, {"accuracy": Accuracy(output_transform=counted)})
    test_loader = DataLoader(test, batch_size=250, collate_fn=pad)
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        trainer.run(loader, max_epochs=epoch)
        if epoch % 3 == 0:
            accuracy = evaluator.run(test_loader).metrics["accuracy"]
            print(f"epoch {epoch}: loss {trainer.state.metrics['epoch_loss']:.4f}, test accuracy {accuracy:.3f}")
    seconds = time.perf_counter() - start
    accuracy = evaluator.run(test_loader).metrics["accuracy"]
    steps = sum(int((tags != IGNORE).sum()) for _, tags in test)
    print(f"test accuracy {accuracy:.3f} over {steps} tagged steps after {epochs} epochs ({seconds:.1f} s)")
    return accuracy


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 12)
