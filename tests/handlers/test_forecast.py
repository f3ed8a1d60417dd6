"""The forecasting workflow: ``WarmStart`` (evaluate the later part of a series from the state its earlier
part leaves, every epoch as validation) and ``PredictionCollector`` (predictions in order, unpadded, per
series), in float64 against the model run by hand over the whole series."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from ignite.engine import Events
from ignite.handlers import EarlyStopping
from ignite.metrics import MeanSquaredError

from ignite_lstm.data.streams import StreamLoader
from ignite_lstm.engine.factories import create_evaluator, create_trainer
from ignite_lstm.handlers.forecast import PredictionCollector, WarmStart
from ignite_lstm.metrics.regression import flatten_counted
from ignite_lstm.models.lstm import StatefulLSTM

TOL = 1e-10
C = 8


def _model(seed: int = 0) -> StatefulLSTM:
    torch.manual_seed(seed)
    return StatefulLSTM(2, 6).double()


def _record(steps: int = 61, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(steps, 2, generator=g, dtype=torch.float64), torch.randn(
        steps, 1, generator=g, dtype=torch.float64
    )


def _mse(model, x, y, cut):
    with torch.no_grad():
        y_hat, _ = model(x[None])
    return ((y_hat[0, cut:] - y[cut:]) ** 2).mean().item(), y_hat[0, cut:]


def test_the_later_part_is_evaluated_from_the_state_of_the_earlier_part():
    x, y = _record()
    model, cut = _model(), 37
    evaluator = create_evaluator(model, {"mse": MeanSquaredError(flatten_counted)}, carry_state=True)
    warm = WarmStart(model, StreamLoader([(x[:cut], y[:cut])], lanes=1, chunk_steps=C))
    warm.attach(evaluator)
    later = StreamLoader([(x[cut:], y[cut:])], lanes=1, chunk_steps=C)
    collector = PredictionCollector(later)
    collector.attach(evaluator)
    evaluator.run(later)
    expected_mse, expected = _mse(model, x, y, cut)
    assert collector.predictions[0].allclose(expected, rtol=TOL, atol=1e-12)  # the whole series' continuation
    assert torch.equal(collector.targets[0], y[cut:])
    assert evaluator.state.metrics["mse"] == pytest.approx(expected_mse, rel=1e-6)  # Ignite sums in float32
    with torch.no_grad():
        cold, _ = model(x[None, cut:])
    assert not collector.predictions[0].allclose(cold[0], rtol=1e-6, atol=1e-9)  # guard: from zeros it differs


def test_warm_start_is_the_per_epoch_validation_early_stopping_reads():
    x, y = _record()
    model, cut = _model(), 40
    trainer = create_trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.05), nn.MSELoss(), tbptt_steps=C, carry_state=True
    )
    val = create_evaluator(model, {"mse": MeanSquaredError(flatten_counted)}, carry_state=True)
    WarmStart(model, StreamLoader([(x[:cut], y[:cut])], lanes=1, chunk_steps=C)).attach(val)
    val_stream = StreamLoader([(x[cut:], y[cut:])], lanes=1, chunk_steps=C)
    seen, expected = [], []

    def validate(engine):
        expected.append(_mse(model, x, y, cut)[0])
        val.run(val_stream)

    trainer.add_event_handler(Events.EPOCH_COMPLETED, validate)
    val.add_event_handler(Events.COMPLETED, lambda e: seen.append(e.state.metrics["mse"]))
    val.add_event_handler(Events.COMPLETED, EarlyStopping(2, lambda e: -e.state.metrics["mse"], trainer))
    train_stream = StreamLoader([(x[:cut], y[:cut])], lanes=2, chunk_steps=C, consecutive=True)
    trainer.run(train_stream, max_epochs=3)
    assert seen == pytest.approx(expected, rel=1e-6) and len(seen) == 3  # one COMPLETED per validation


def test_warm_start_takes_the_lanes_it_is_told():
    x, y = _record()
    model = _model()
    segments = StreamLoader([(x[:48], y[:48])], lanes=3, chunk_steps=C, consecutive=True)  # 16 steps each
    evaluator = create_evaluator(model, carry_state=True)
    warm = WarmStart(model, segments, lanes=[-1])
    warm.attach(evaluator)
    collector = PredictionCollector()
    collector.attach(evaluator)
    evaluator.run(StreamLoader([(x[48:], y[48:])], lanes=1, chunk_steps=C))
    with torch.no_grad():
        y_hat, _ = model(x[None, 32:])  # lane 2 started fresh at step 32
    assert collector.predictions[0].allclose(y_hat[0, 16:], rtol=TOL, atol=1e-12)
    with pytest.raises(ValueError, match=r"lane indices in \[0, 3\)"):
        WarmStart(model, segments, lanes=[3])(evaluator)
    with pytest.raises(TypeError, match="carry_state=True"):
        warm.attach(create_evaluator(model))
    # 50 steps in 3 lanes of 8-step chunks: 2 + 2 + 3 chunks, lanes 0 and 1 end before the last batch
    uneven = StreamLoader([(x[:50], y[:50])], lanes=3, chunk_steps=C, consecutive=True)
    with pytest.raises(ValueError, match=r"the series of lanes \[0, 1\] end before the stream's last step"):
        WarmStart(model, uneven)(evaluator)
    WarmStart(model, uneven, lanes=[2])(evaluator)  # the lane that ends with the series is fine


def test_predictions_are_collected_per_series_in_the_loaders_order():
    model = _model()
    series = [_record(steps, seed) for steps, seed in ((19, 2), (8, 3), (30, 4), (5, 5))]
    loader = StreamLoader(series, lanes=2, chunk_steps=C, shuffle=True, seed=3)
    evaluator = create_evaluator(model, carry_state=True)
    collector = PredictionCollector(loader)
    collector.attach(evaluator)
    evaluator.run(loader)
    assert len(collector.predictions) == 4
    for (x, y), got, target in zip(series, collector.predictions, collector.targets):
        with torch.no_grad():
            expected, _ = model(x[None])
        assert got.shape == y.shape and got.allclose(expected[0], rtol=TOL, atol=1e-12)
        assert torch.equal(target, y)


def test_the_segments_of_a_consecutive_loader_are_joined_back_into_their_series():
    x, y = _record(50)
    model = _model()
    loader = StreamLoader([(x, y)], lanes=3, chunk_steps=C, consecutive=True)
    evaluator = create_evaluator(model, carry_state=True)
    collector = PredictionCollector(loader)
    collector.attach(evaluator)
    evaluator.run(loader)
    (got,) = collector.predictions
    with torch.no_grad():
        parts = [model(x[None, s.start : s.stop])[0][0] for s in loader.series]  # each segment from zeros
    assert got.allclose(torch.cat(parts), rtol=TOL, atol=1e-12)


def test_an_evaluator_of_whole_sequences_gives_one_series_per_row_unpadded():
    from ignite_lstm.engine.batches import collate_sequences

    model = _model()
    series = [_record(steps, seed) for steps, seed in ((9, 2), (4, 3), (6, 4))]
    evaluator = create_evaluator(model)
    collector = PredictionCollector()
    collector.attach(evaluator)
    x, y, mask = collate_sequences(series[:2])
    x2, y2, mask2 = collate_sequences(series[2:])
    evaluator.run([(x, y, mask), (x2, y2, mask2)])
    assert [p.shape[0] for p in collector.predictions] == [9, 4, 6]
    with torch.no_grad():
        expected, _ = model(series[1][0][None])
    assert collector.predictions[1].allclose(expected[0], rtol=TOL, atol=1e-12)


# --- SkipFirstSteps: the first K steps of every series warm the state up and count in no metric --------


def _hand_mse(model, series, k):
    errors = []
    with torch.no_grad():
        for x, y in series:
            y_hat, _ = model(x[None])
            errors.append((y_hat[0, k:] - y[k:]) ** 2)
    return torch.cat(errors).mean().item()


@pytest.mark.parametrize("lanes", [1, 2])
def test_a_stream_evaluation_skips_the_first_steps_of_every_series(lanes):
    from ignite_lstm.handlers.warmup import SkipFirstSteps

    model = _model()
    series = [_record(steps, seed) for steps, seed in ((29, 2), (19, 3), (24, 4))]  # several series per lane
    evaluator = create_evaluator(model, {"mse": MeanSquaredError(flatten_counted)}, carry_state=True)
    SkipFirstSteps(11).attach(evaluator)  # more than a chunk: the count carries across batches
    evaluator.run(StreamLoader(series, lanes=lanes, chunk_steps=C))
    assert evaluator.state.metrics["mse"] == pytest.approx(_hand_mse(model, series, 11), rel=1e-6)
    assert _hand_mse(model, series, 11) != pytest.approx(_hand_mse(model, series, 0), rel=1e-3)  # guard


def test_an_evaluation_of_whole_sequences_skips_their_first_steps():
    from ignite_lstm.engine.batches import collate_sequences
    from ignite_lstm.handlers.warmup import SkipFirstSteps

    model = _model()
    series = [_record(steps, seed) for steps, seed in ((15, 2), (9, 3))]
    evaluator = create_evaluator(model, {"mse": MeanSquaredError(flatten_counted)})
    SkipFirstSteps(4).attach(evaluator)
    evaluator.run([collate_sequences(series)])
    assert evaluator.state.metrics["mse"] == pytest.approx(_hand_mse(model, series, 4), rel=1e-6)
    with pytest.raises(ValueError, match="Argument steps should be >= 0, got -1."):
        SkipFirstSteps(-1)
