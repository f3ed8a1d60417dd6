"""One-step-ahead forecasting of a real multivariate series in stream mode: US quarterly macro data.

The quarterly US macro-economic record that statsmodels ships (``macrodata``: 1959 Q1 to
2009 Q3, 203 quarters) is one long series. Each step reads a quarter's five indicators (real
GDP growth, real consumption growth, inflation, unemployment, the T-bill rate; standardised
on the training quarters) and forecasts the next quarter's inflation and unemployment, as
the change from this quarter (the forecast is this quarter's value plus it).

The forecasting workflow, with nothing written by hand:

- the training quarters cut into 2 consecutive lanes by ``StreamLoader(..., consecutive=True)``,
  trained in chunks of 16 quarters with ``create_trainer(..., carry_state=True)``;
- validation every epoch from the state the training quarters leave (``WarmStart``), read by
  Ignite's ``EarlyStopping`` and the best ``Checkpoint``;
- the test quarters evaluated from the state that the training and validation quarters leave
  (``WarmStart`` again), the forecast collected in order (``PredictionCollector``) and scored
  per target (``channel_metrics``: ``mse_infl``, ``mse_unemp``);
- two baselines: no change (persistence) and a linear model of this quarter's indicators
  (least squares on the training and validation quarters). ``macro_forecast.png`` shows the
  test quarters.

Needs statsmodels (``pip install -r requirements.txt`` has it; or the ``examples`` extra).

Run: ``python examples/macro_forecast.py [OUTPUT_DIR]`` (default: a temporary folder).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from ignite.engine import Events
from ignite.handlers import Checkpoint, DiskSaver, EarlyStopping
from ignite.metrics import MeanSquaredError

from ignite_lstm import StatefulLSTM, StreamLoader, create_evaluator, create_trainer
from ignite_lstm.handlers import PredictionCollector, WarmStart
from ignite_lstm.metrics import channel_metrics, flatten_counted

TARGETS = ["infl", "unemp"]
CHUNK, LANES, EPOCHS, PATIENCE = 16, 2, 300, 30
N_TRAIN, N_VAL = 130, 36  # quarters (steps) of training and validation; the rest (35) is the test


def load_macro() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs (202, 5), the next quarter's change of the targets (202, 2) and the targets' levels (203, 2)."""
    from statsmodels.datasets import macrodata

    d = macrodata.load_pandas().data
    growth = 100 * np.diff(np.log(d[["realgdp", "realcons"]].to_numpy()), axis=0)  # quarter t's growth, t >= 1
    level = d[["infl", "unemp", "tbilrate"]].to_numpy()[1:]
    x = np.concatenate([growth, level], axis=1)  # (202, 5): quarters 1 .. 202
    targets = d[TARGETS].to_numpy()  # (203, 2)
    change = targets[2:] - targets[1:-1]  # step t (quarter t + 1): the change to the next quarter
    return x[:-1], change, targets


def main(out_dir: Path) -> None:
    torch.manual_seed(0)
    x_raw, change, levels = load_macro()
    n_fit = N_TRAIN + N_VAL
    x_mean, x_std = x_raw[:N_TRAIN].mean(0), x_raw[:N_TRAIN].std(0)
    y_std = change[:N_TRAIN].std(0)
    x = torch.tensor((x_raw - x_mean) / x_std, dtype=torch.float32)  # (201, 5)
    y = torch.tensor(change / y_std, dtype=torch.float32)  # (201, 2)
    train, val, test = (x[:N_TRAIN], y[:N_TRAIN]), (x[N_TRAIN:n_fit], y[N_TRAIN:n_fit]), (x[n_fit:], y[n_fit:])
    history = (x[:n_fit], y[:n_fit])  # what the test quarters continue

    model = StatefulLSTM(input_size=5, hidden_size=16, output_size=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    trainer = create_trainer(model, optimizer, nn.MSELoss(), tbptt_steps=CHUNK, update="window", carry_state=True)
    metrics = {"mse": MeanSquaredError(flatten_counted), **channel_metrics(MeanSquaredError, "mse", TARGETS)}

    # validation: the validation quarters from the state at the last training quarter, every epoch
    validator = create_evaluator(model, metrics, carry_state=True)
    WarmStart(model, StreamLoader([train], lanes=1, chunk_steps=CHUNK)).attach(validator)
    val_stream = StreamLoader([val], lanes=1, chunk_steps=CHUNK)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda: validator.run(val_stream))
    score = Checkpoint.get_default_score_fn("mse", -1.0)
    best = Checkpoint(
        {"model": model},
        DiskSaver(out_dir / "checkpoints", require_empty=False),
        score_function=score,
        score_name="neg_val_mse",
    )
    validator.add_event_handler(Events.COMPLETED, best)
    validator.add_event_handler(Events.COMPLETED, EarlyStopping(PATIENCE, score, trainer))
    trainer.run(StreamLoader([train], lanes=LANES, chunk_steps=CHUNK, consecutive=True), max_epochs=EPOCHS)
    Checkpoint.load_objects({"model": model}, torch.load(best.last_checkpoint, weights_only=True))

    # the test: from the state at the last validation quarter, the forecast in order
    tester = create_evaluator(model, channel_metrics(MeanSquaredError, "mse", TARGETS), carry_state=True)
    WarmStart(model, StreamLoader([history], lanes=1, chunk_steps=CHUNK)).attach(tester)
    test_stream = StreamLoader([test], lanes=1, chunk_steps=CHUNK)
    collector = PredictionCollector(test_stream)
    collector.attach(tester)
    tester.run(test_stream)
    predicted = collector.predictions[0].double().numpy() * y_std  # (35, 2): the next quarter's change
    with torch.no_grad():  # by hand: the whole record in one forward pass from zeros
        by_hand = model(x[None])[0][0, n_fit:].double().numpy() * y_std

    now = levels[1 + n_fit : -1]  # the quarter each test step stands at
    truth = levels[2 + n_fit :]  # the next quarter
    fit = np.concatenate([x_raw[:n_fit], np.ones((n_fit, 1))], axis=1)
    coef, *_ = np.linalg.lstsq(fit, change[:n_fit], rcond=None)
    linear = now + np.concatenate([x_raw[n_fit:], np.ones((len(now), 1))], axis=1) @ coef
    forecasts = {"lstm": now + predicted, "persistence": now, "linear": linear}
    mse = {name: ((f - truth) ** 2).mean(axis=0) for name, f in forecasts.items()}

    print(
        f"trained {trainer.state.epoch} epochs of {LANES} lanes x {CHUNK} quarters (early stopping, patience "
        f"{PATIENCE}); best checkpoint: {Path(best.last_checkpoint).name}"
    )
    print(
        f"test quarters: {len(truth)}; the forecast equals the whole record run by hand: "
        f"{np.allclose(predicted, by_hand, rtol=1e-4, atol=1e-5)}; per target (scaled): "
        + ", ".join(f"{k} {v:.4f}" for k, v in tester.state.metrics.items())
    )
    for i, name in enumerate(TARGETS):
        print(f"test MSE of next quarter's {name}: " + ", ".join(f"{k} {v[i]:.4f}" for k, v in mse.items()))
    _figure(out_dir / "macro_forecast.png", levels, n_fit, truth, forecasts, mse)
    print(f"figure: {out_dir / 'macro_forecast.png'}")


def _figure(path: Path, levels, n_fit, truth, forecasts, mse) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quarters = 1959 + (np.arange(len(levels)) + 0.5) / 4  # quarter q of the record, as a year
    t = quarters[2 + n_fit :]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, (ax, name) in enumerate(zip(axes, TARGETS)):
        ax.plot(t, truth[:, i], color="black", lw=1.4, label="measured")
        for (label, f), color in zip(forecasts.items(), ("tab:red", "tab:gray", "tab:blue")):
            ax.plot(t, f[:, i], color=color, lw=1.0, label=f"{label} (MSE {mse[label][i]:.3f})")
        ax.set_title(f"next quarter's {name}, test quarters")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:  # used when no OUTPUT_DIR is given
        target = Path(sys.argv[1] if len(sys.argv) > 1 else scratch)
        target.mkdir(parents=True, exist_ok=True)
        main(target)
