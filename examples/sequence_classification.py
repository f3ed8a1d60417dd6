"""Sequence classification on a real data set of variable-length sequences: one label per sequence.

The data: the UEA archive's JapaneseVowels, as sktime ships it (``sktime/datasets/data``, read
here from its ``.ts`` files; sktime itself is not imported): nine speakers each uttering the
Japanese vowels /ae/, recorded as 12 LPC cepstrum coefficients per frame, 7 to 29 frames per
utterance; 270 training and 370 test utterances; the class is the speaker (9 classes).

The library does all the sequence work: ``collate_last`` pads each batch and builds its mask,
``targets="last"`` compares each sequence's label with the model's output at its last real
frame, ``nn.CrossEntropyLoss()`` is passed as it is, and Ignite's ``Accuracy()`` and
``ConfusionMatrix`` are attached to the evaluator as they are (it hands them one row per
sequence). ``tbptt_steps`` covers the longest sequence, so the gradient reaches every frame.

Published accuracies on this split range from about 92% (1-NN with Euclidean distance) and
95-96% (1-NN DTW) to about 99% (deep and ensemble classifiers); see the UEA archive paper
(Bagnall et al., 2018) and the multivariate bake-off (Ruiz et al., 2021).

Run: ``python examples/sequence_classification.py [EPOCHS]`` (default 20; needs the
``examples`` extra: ``pip install 'ignite_lstm[examples]'``).
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
from ignite.engine import Events
from ignite.metrics import Accuracy, ConfusionMatrix
from torch.utils.data import DataLoader

from ignite_lstm import StatefulLSTM, collate_last, create_evaluator, create_trainer


def vowels_folder() -> Path:
    """The JapaneseVowels folder inside the installed sktime package (located, not imported)."""
    spec = importlib.util.find_spec("sktime")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("This example reads JapaneseVowels from sktime: pip install 'ignite_lstm[examples]'.")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "JapaneseVowels"


def read_ts(path: Path) -> list[tuple[torch.Tensor, int]]:
    """A ``.ts`` file of unequal-length multivariate series: [(x (T, 12), class index 0..8)]."""
    cases, in_data = [], False
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            in_data = line.lower() == "@data"
            continue
        *channels, label = line.split(":")
        x = torch.tensor([[float(v) for v in channel.split(",")] for channel in channels]).T  # (T, 12)
        cases.append((x, int(label) - 1))
    return cases


def main(epochs: int = 20) -> float:
    torch.manual_seed(0)
    folder = vowels_folder()
    train, test = read_ts(folder / "JapaneseVowels_TRAIN.ts"), read_ts(folder / "JapaneseVowels_TEST.ts")
    frames = torch.cat([x for x, _ in train])
    mean, std = frames.mean(0), frames.std(0)  # per coefficient, from the training frames only
    train = [((x - mean) / std, c) for x, c in train]
    test = [((x - mean) / std, c) for x, c in test]
    longest = max(len(x) for x, _ in train + test)
    lengths = sorted(len(x) for x, _ in train + test)
    print(f"JapaneseVowels: {len(train)} train, {len(test)} test, {lengths[0]}-{lengths[-1]} frames, 12 channels")

    loader = DataLoader(
        train, batch_size=16, shuffle=True, collate_fn=collate_last, generator=torch.Generator().manual_seed(0)
    )
    model = StatefulLSTM(12, 64, output_size=9)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    trainer = create_trainer(model, optimizer, nn.CrossEntropyLoss(), targets="last", tbptt_steps=longest)
    evaluator = create_evaluator(
        model, {"accuracy": Accuracy(), "confusion": ConfusionMatrix(num_classes=9)}, targets="last"
    )
    test_loader = DataLoader(test, batch_size=128, collate_fn=collate_last)

    @trainer.on(Events.EPOCH_COMPLETED(every=5))
    def report(engine):
        accuracy = evaluator.run(test_loader).metrics["accuracy"]
        print(
            f"epoch {engine.state.epoch}: loss {engine.state.metrics['epoch_loss']:.4f}, test accuracy {accuracy:.3f}"
        )

    start = time.perf_counter()
    trainer.run(loader, max_epochs=epochs)
    seconds = time.perf_counter() - start
    metrics = evaluator.run(test_loader).metrics
    print(f"confusion matrix (rows: true speaker):\n{metrics['confusion'].int()}")
    print(f"test accuracy {metrics['accuracy']:.3f} after {epochs} epochs ({seconds:.1f} s of training)")
    return metrics["accuracy"]


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
