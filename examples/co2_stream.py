"""A stateful forecaster in stream mode on a real series: the Mauna Loa CO2 record.

The weekly CO2 record that statsmodels ships (March 1958 to December 2001, 2,284
weeks; the 59 missing weeks filled by linear interpolation) is one long series. The
model reads one week per step (the week's change, standardised) and forecasts the
change over the next 13 weeks, so it must know where in the seasonal cycle it stands:
that lives in its state, carried from batch to batch.

- Training: the first 36 years are cut into 4 consecutive segments of 9 years, laid
  out in 4 lanes by ``StreamLoader`` and trained in chunks of 52 weeks with
  ``create_trainer(..., carry_state=True)``: each chunk continues its lane's state, the
  gradient sees the chunk (``tbptt_steps=52``).
- Validation continues where training ended: a stream evaluation of the training
  lanes gives the state at the end of the last segment (the last week of training),
  ``set_state`` starts the test stream's evaluator from it, and the remaining years
  are evaluated chunk by chunk, which equals them evaluated in one piece.
- The forecast is compared with two baselines: no change (persistence), and the same
  change as a year earlier (seasonal naive). ``co2_forecast.png`` shows it against the
  truth over the test years.

Needs statsmodels (``pip install -r requirements.txt`` has it; or the ``examples`` extra).

Run: ``python examples/co2_stream.py [OUTPUT_DIR]`` (default: a temporary folder).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from ignite.engine import Events
from ignite.metrics import MeanSquaredError

from ignite_lstm import StatefulLSTM, StreamLoader, create_evaluator, create_trainer, set_state

HORIZON = 13  # weeks ahead
CHUNK = 52  # weeks per batch of the stream (and the truncated-BPTT window)
LANES, YEARS_PER_LANE = 4, 9
EPOCHS = 60


def load_co2() -> np.ndarray:
    """The weekly record in ppm, (2284,) float64, gaps interpolated."""
    from statsmodels.datasets import co2

    return co2.load_pandas().data["co2"].interpolate().to_numpy(dtype=np.float64)


def make_streams(ppm: np.ndarray):
    """Inputs, targets and scales: step t reads the change of week t, targets the change over the next HORIZON."""
    change = np.diff(ppm)  # week t's change: ppm[t + 1] - ppm[t], for t = 0 .. N - 2
    ahead = ppm[1 + HORIZON :] - ppm[1:-HORIZON]  # step t: ppm[t + 1 + HORIZON] - ppm[t + 1]
    change = change[: len(ahead)]
    n_train = LANES * YEARS_PER_LANE * CHUNK
    x_scale, y_scale = change[:n_train].std(), ahead[:n_train].std()
    x = torch.tensor(change / x_scale, dtype=torch.float32)[:, None]
    y = torch.tensor(ahead / y_scale, dtype=torch.float32)[:, None]
    return x, y, n_train, y_scale


def main(out_dir: Path) -> None:
    torch.manual_seed(0)
    ppm = load_co2()
    x, y, n_train, y_scale = make_streams(ppm)
    per_lane = n_train // LANES
    segments = [(x[i * per_lane : (i + 1) * per_lane], y[i * per_lane : (i + 1) * per_lane]) for i in range(LANES)]
    train_stream = StreamLoader(segments, lanes=LANES, chunk_steps=CHUNK)  # segment i in lane i, 9 chunks each
    test_stream = StreamLoader([(x[n_train:], y[n_train:])], lanes=1, chunk_steps=CHUNK)  # noqa: F841 (unused: issue 26)

    model = StatefulLSTM(input_size=1, hidden_size=32)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    trainer = create_trainer(model, optimizer, nn.MSELoss(), tbptt_steps=CHUNK, update="window", carry_state=True)
    trainer.run(train_stream, max_epochs=EPOCHS)

    # The state at the last week of training, under the final weights: the training lanes evaluated as a stream.
    warm_up = create_evaluator(model, carry_state=True)
    warm_up.run(train_stream)
    h, c = warm_up.state.carried_state
    end_of_training = (h[:, -1:], c[:, -1:])  # the last lane ends where the test years begin

    def forecast(chunk_steps: int) -> tuple[torch.Tensor, float]:
        evaluator = create_evaluator(
            model, {"mse": MeanSquaredError(lambda o: (o["y_pred"], o["y"]))}, carry_state=True
        )
        set_state(evaluator, end_of_training)
        predictions = []
        evaluator.add_event_handler(
            Events.ITERATION_COMPLETED,
            lambda e: predictions.append(e.state.output["y_pred"]),  # the counted steps
        )
        evaluator.run(StreamLoader([(x[n_train:], y[n_train:])], lanes=1, chunk_steps=chunk_steps))
        return torch.cat(predictions)[:, 0], evaluator.state.metrics["mse"]

    predicted, scaled_mse = forecast(CHUNK)
    whole, _ = forecast(len(x) - n_train)  # the test years in one chunk
    steps = np.arange(n_train, len(x))  # step t forecasts ppm[t + 1 + HORIZON] from ppm[t + 1]
    now, truth = ppm[steps + 1], ppm[steps + 1 + HORIZON]
    lstm = now + predicted.double().numpy() * y_scale
    seasonal = now + (ppm[steps + 1 + HORIZON - 52] - ppm[steps + 1 - 52])
    mse = {
        name: float(np.mean((guess - truth) ** 2))
        for name, guess in (("lstm", lstm), ("persistence", now), ("seasonal naive", seasonal))
    }

    print(
        f"trained {EPOCHS} epochs of {len(train_stream)} chunks ({LANES} lanes x {CHUNK} weeks), "
        f"carry_state: {trainer.state.carried_state is not None}"
    )
    print(
        f"test years: {len(steps)} weeks; chunk by chunk == in one piece: "
        f"{torch.allclose(predicted, whole, rtol=1e-5, atol=1e-6)}; scaled MSE {scaled_mse:.4f}"
    )
    print(
        f"test MSE of the {HORIZON}-week forecast (ppm^2): "
        + ", ".join(f"{name} {value:.3f}" for name, value in mse.items())
    )
    print(
        f"lstm beats persistence: {mse['lstm'] < mse['persistence']}; "
        f"lstm beats seasonal naive: {mse['lstm'] < mse['seasonal naive']}"
    )
    _figure(out_dir / "co2_forecast.png", steps, truth, lstm, seasonal, mse)
    print(f"figure: {out_dir / 'co2_forecast.png'}")


def _figure(path: Path, steps, truth, lstm, seasonal, mse) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = np.datetime64("1958-03-29") + np.timedelta64(7, "D") * (steps + 1 + HORIZON)
    fig, ax = plt.subplots(figsize=(9, 3.6))
    ax.plot(start, truth, color="black", lw=1.2, label="measured")
    ax.plot(start, lstm, color="tab:red", lw=1.0, label=f"stateful LSTM, {HORIZON} weeks ahead (MSE {mse['lstm']:.2f})")
    ax.plot(
        start,
        seasonal,
        color="tab:blue",
        lw=0.8,
        alpha=0.6,
        label=f"same change as a year earlier (MSE {mse['seasonal naive']:.2f})",
    )
    ax.set_ylabel("CO2 at Mauna Loa, ppm")
    ax.set_title(f"Test years: forecasts {HORIZON} weeks ahead, made from the state carried through the stream")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as scratch:  # used when no OUTPUT_DIR is given
        target = Path(sys.argv[1] if len(sys.argv) > 1 else scratch)
        target.mkdir(parents=True, exist_ok=True)
        main(target)
