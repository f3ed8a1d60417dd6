"""Handlers around the loop: early stopping, scores, TensorBoard, progress, all deterministic."""

import io
import json
import logging
import math
import os
import struct

import pytest
import torch
from handler_helpers import ITERATIONS_PER_EPOCH, run_cli, scripted_evaluator, tiny_args
from ignite.engine import Engine, Events
from ignite.metrics import Average, RunningAverage
from tensorboardX.proto import event_pb2
from torch.utils.data import DataLoader, TensorDataset

from ignite_lstm.app.task.metrics import build_metrics
from ignite_lstm.engine.factories import TimeEvents, create_evaluator, create_trainer
from ignite_lstm.handlers.common import (
    attach_early_stopping,
    attach_progress,
    attach_tensorboard,
    score_function,
)
from ignite_lstm.models.lstm import StatefulLSTM, load_model

# --- early stopping --------------------------------------------------------------------------------------


def _early_stopping_run(monitor, script, *, patience, min_delta=0.0, epochs=None, stopper_state=None, mode=None):
    trainer = Engine(lambda e, b: None)
    evaluator = scripted_evaluator(trainer, monitor, script)
    stopper = attach_early_stopping(
        trainer,
        evaluator,
        monitor=monitor,
        patience=patience,
        min_delta=min_delta,
        **({} if mode is None else {"mode": mode}),
    )
    if stopper_state is not None:
        trainer.load_state_dict(stopper_state["trainer"])
        stopper.load_state_dict(stopper_state["early_stopping"])
    trainer.run([0], max_epochs=epochs or len(script))
    return trainer, stopper


@pytest.mark.parametrize("min_delta,stop_epoch", [(0.05, 4), (0.0, 7)])
def test_early_stopping_on_lower_is_better_with_patience_and_min_delta(min_delta, stop_epoch):
    script = [1.0, 0.8, 0.79, 0.81, 0.5, 0.6, 0.7, 0.1, 0.1]
    # min_delta 0.05: 0.79 is no improvement on 0.8 -> epochs 3, 4 without one -> stop after epoch 4.
    # min_delta 0:    0.79 and 0.5 improve, then 0.6, 0.7 do not -> stop after epoch 7.
    trainer, _ = _early_stopping_run("mse", script, patience=2, min_delta=min_delta)
    assert trainer.state.epoch == stop_epoch


def test_early_stopping_on_higher_is_better():
    trainer, _ = _early_stopping_run("snr", [1.0, 2.0, 2.0, 1.9, 3.0], patience=2)
    assert trainer.state.epoch == 4  # 2.0 is not above 2.0, 1.9 neither
    trainer, _ = _early_stopping_run("mse", [1.0, 2.0, 2.0, 1.9, 3.0], patience=2)
    assert trainer.state.epoch == 3  # as an error, 2.0 and 2.0 are both worse than 1.0


def test_slow_steady_progress_counts_once_it_adds_up_to_min_delta():
    # Each step improves by 0.04 < min_delta 0.05; two steps together do. Ignite's default
    # (cumulative=False) would move the best every epoch and stop after epoch 3.
    trainer, _ = _early_stopping_run("mse", [1.0, 0.96, 0.92, 0.88, 0.84, 0.80], patience=2, min_delta=0.05)
    assert trainer.state.epoch == 6


def test_nan_validation_never_counts_as_improvement():
    trainer, _ = _early_stopping_run("mse", [1.0, math.nan, math.nan, 0.1], patience=2)
    assert trainer.state.epoch == 3


@pytest.mark.parametrize("mode,stop_epoch", [("min", 3), ("max", 4)])
def test_early_stopping_on_any_metric_in_the_mode_given(mode, stop_epoch):
    # as mse and snr in test_early_stopping_on_higher_is_better, for a metric of the user's own
    trainer, _ = _early_stopping_run("loss", [1.0, 2.0, 2.0, 1.9, 3.0], patience=2, mode=mode)
    assert trainer.state.epoch == stop_epoch
    trainer, _ = _early_stopping_run("loss", [1.0, math.nan, math.nan, 5.0], patience=2, mode=mode)
    assert trainer.state.epoch == 3  # a NaN never improves, in either direction


def test_score_is_higher_for_better_and_lowest_for_nan_in_both_directions():
    engine = Engine(lambda e, b: None)
    for monitor, mode, value, score in [
        ("mse", None, 0.5, -0.5),
        ("snr", None, 0.5, 0.5),
        ("loss", "min", 0.5, -0.5),
        ("loss", "max", 0.5, 0.5),
        ("mse", None, math.nan, -math.inf),
        ("snr", None, math.inf, -math.inf),
        ("loss", "min", -math.inf, -math.inf),
    ]:
        engine.state.metrics = {monitor: value}
        assert score_function(monitor, mode)(engine) == score, (monitor, mode, value)


def test_an_unknown_metric_without_mode_is_refused_by_early_stopping_and_the_score():
    trainer = Engine(lambda e, b: None)
    message = (
        r"Unknown metric 'acuracy'; known: .* For another metric, pass mode='min' \(lower is better\) or mode='max'\."
    )
    with pytest.raises(ValueError, match=message):
        attach_early_stopping(trainer, Engine(lambda e, b: None), monitor="acuracy", patience=2)
    with pytest.raises(ValueError, match=message):
        score_function("acuracy")


def test_early_stopping_state_survives_a_weights_only_checkpoint():
    script = [1.0, 0.9, 0.95, 0.97, 0.99, 0.98, 0.1]
    whole, _ = _early_stopping_run("mse", script, patience=3)
    assert whole.state.epoch == 5
    first, stopper = _early_stopping_run("mse", script, patience=3, epochs=3)
    buffer = io.BytesIO()
    torch.save({"trainer": first.state_dict(), "early_stopping": stopper.state_dict()}, buffer)
    buffer.seek(0)
    resumed, _ = _early_stopping_run(
        "mse", script, patience=3, epochs=len(script), stopper_state=torch.load(buffer, weights_only=True)
    )
    assert resumed.state.epoch == 5


# --- TensorBoard ----------------------------------------------------------------------------------------


def read_events(log_dir) -> dict[str, list[tuple[int, float | None]]]:
    """Every summary value of the event files: tag -> [(step, scalar or None for a histogram)]."""
    values: dict[str, list] = {}
    for name in sorted(os.listdir(log_dir)):
        data = (log_dir / name).read_bytes()
        pos = 0
        while pos < len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for v in event.summary.value:
                values.setdefault(v.tag, []).append((event.step, None if v.HasField("histo") else v.simple_value))
    return values


def test_tensorboard_window_loss_groups_windows_across_chunks(tmp_path):
    # fused-detached: one-step windows in chunks of 7, groups of 3 windows that straddle the chunks
    torch.manual_seed(0)
    loader = DataLoader(TensorDataset(torch.randn(4, 20, 3), torch.randn(4, 20, 1)), batch_size=2)
    model = StatefulLSTM(input_size=3, hidden_size=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    trainer = create_trainer(model, optimizer, torch.nn.MSELoss(), tbptt_steps=1, chunk_steps=7)
    assert trainer.state.execution == "fused-detached"
    Average(output_transform=lambda o: o["loss"]).attach(trainer, "epoch_loss")
    evaluator = create_evaluator(model, build_metrics([1.0, 3.0], names=("mse",)))
    windows = []
    trainer.add_event_handler(TimeEvents.CHUNK_COMPLETED, lambda e: windows.extend(e.state.window_losses.tolist()))
    attach_tensorboard(trainer, evaluator, optimizer, tmp_path, window_every=3)
    trainer.run(loader, max_epochs=1)
    assert len(windows) == 40
    expected = [(k, pytest.approx(sum(windows[k - 3 : k]) / 3, rel=1e-6)) for k in range(3, 41, 3)]
    assert read_events(tmp_path)["train/window_loss"] == expected


def test_tensorboard_events_hold_losses_metrics_lr_grad_norm_and_histograms(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(4, 20, 3)
    x[:, :, 1:] = torch.tensor([[1.0, 0.0]] * 2 + [[0.0, 1.0]] * 2)[:, None, :]  # one-hot frequency selector
    loader = DataLoader(TensorDataset(x, torch.randn(4, 20, 1)), batch_size=2)  # 2 iterations of 4 windows
    model = StatefulLSTM(input_size=3, hidden_size=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    trainer = create_trainer(model, optimizer, torch.nn.MSELoss(), tbptt_steps=5, update="window")
    Average(output_transform=lambda o: o["loss"]).attach(trainer, "epoch_loss")
    evaluator = create_evaluator(model, build_metrics([1.0, 3.0]))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run(loader))
    outputs, windows = {}, []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: outputs.__setitem__(e.state.iteration, dict(e.state.output))
    )
    trainer.add_event_handler(TimeEvents.WINDOW_COMPLETED, lambda e: windows.append(e.state.window_loss.item()))
    attach_tensorboard(trainer, evaluator, optimizer, tmp_path, every=2, window_every=3, histograms=True, model=model)
    trainer.run(loader, max_epochs=2)

    events = read_events(tmp_path)
    for tag, key in (("train/loss", "loss"), ("train/grad_norm", "grad_norm")):
        assert events[tag] == [(i, pytest.approx(outputs[i][key], rel=1e-6)) for i in (2, 4)]
    assert [s for s, _ in events["lr/group_0"]] == [2, 4]
    assert [s for s, _ in events["train/epoch_loss"]] == [1, 2]
    for name, value in evaluator.state.metrics.items():  # every validation metric, once per epoch
        assert [s for s, _ in events[f"val/{name}"]] == [1, 2]
        assert events[f"val/{name}"][-1][1] == pytest.approx(value, rel=1e-6)
    assert len(evaluator.state.metrics) == 6 + 3  # mse ... snr, mse_f1, mse_f3, mse_worst
    assert len(windows) == 16
    group_means = [sum(windows[k - 3 : k]) / 3 for k in (3, 6, 9, 12, 15)]
    assert events["train/window_loss"] == [
        (k, pytest.approx(m, rel=1e-6)) for k, m in zip((3, 6, 9, 12, 15), group_means)
    ]
    histograms = [tag for tag, v in events.items() if v[0][1] is None]
    assert "weights/head/weight" in histograms and [s for s, _ in events["weights/head/weight"]] == [1, 2]


# --- progress bar ----------------------------------------------------------------------------------------


def _progress_run(stream, iterations: int, epochs: int, **kwargs) -> None:
    trainer = Engine(lambda e, b: {"loss": 0.25})
    RunningAverage(output_transform=lambda o: o["loss"]).attach(trainer, "running_loss")
    attach_progress(trainer, file=stream, **kwargs)
    trainer.run(range(iterations), max_epochs=epochs)


def _terminal_output(iterations: int, epochs: int, **kwargs) -> str:
    """What the bar writes to a real terminal (a pseudo-terminal), every update drawn (no time throttle)."""
    kwargs.setdefault("mininterval", 0)
    master, slave = os.openpty()
    try:
        with os.fdopen(slave, "w") as terminal:
            _progress_run(terminal, iterations, epochs, **kwargs)
        os.set_blocking(master, False)
        chunks = []
        while True:
            try:
                chunks.append(os.read(master, 65536))
            except (BlockingIOError, OSError):  # drained (OSError: EIO once the slave side is closed)
                break
        return b"".join(chunks).decode()
    finally:
        os.close(master)


def test_progress_bar_shows_the_running_loss_on_a_terminal():
    assert "running_loss=0.25" in _terminal_output(3, 1)


def test_progress_bar_moves_over_the_epochs_when_an_epoch_is_one_iteration():
    out = _terminal_output(1, 3, leave=True)  # the last state kept
    assert "[3/3]" in out and "1/1" not in out  # counts epochs, not the single iteration of each


def test_progress_bar_takes_tqdms_leave():
    assert "running_loss=0.25" in _terminal_output(3, 1, leave=True)


def test_progress_bar_draws_nothing_in_output_that_is_not_a_terminal(tmp_path):
    stream = io.StringIO()
    _progress_run(stream, 3, 2, leave=False)
    with open(tmp_path / "log", "w") as log:
        _progress_run(log, 3, 2)
    assert stream.getvalue() == "" and (tmp_path / "log").read_text() == ""
    forced = io.StringIO()
    _progress_run(forced, 3, 1, disable=False, mininterval=0)
    assert "running_loss=0.25" in forced.getvalue()


# --- the handlers section end to end ---------------------------------------------------------------------


def test_early_stopping_restores_the_best_weights_and_history_and_log_record_every_epoch(tmp_path, monkeypatch, caplog):
    """Scripted validation mse 0.5, 0.3, 0.4, 0.45: best at epoch 2, no improvement twice -> stop after 4."""
    monkeypatch.setenv("SCRIPT", "mse:0.5,0.3,0.4,0.45,0.2,0.1")
    caplog.set_level(logging.INFO, logger="ignite_lstm")
    run_dir = tmp_path / "runs" / "es"
    code = run_cli(
        tiny_args(
            tmp_path / "data",
            tmp_path / "runs",
            "es",
            "train.epochs=6",
            "handlers.early_stopping.patience=2",
            "handlers.extra=[handler_helpers:scripted_metric]",
        )
    )
    assert code == 0
    files = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    best_iteration, last_iteration = 2 * ITERATIONS_PER_EPOCH, 4 * ITERATIONS_PER_EPOCH
    assert files == [f"best_checkpoint_{best_iteration}_neg_val_mse=-0.3000.pt", f"last_checkpoint_{last_iteration}.pt"]
    final, _ = load_model(run_dir / "model.pt")
    best, _ = load_model(run_dir / "checkpoints" / files[0])
    last, _ = load_model(run_dir / "checkpoints" / files[1])
    for name, tensor in final.state_dict().items():
        assert torch.equal(tensor, best.state_dict()[name]), name
    assert not torch.equal(final.head.weight, last.head.weight)

    history = json.loads((run_dir / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2, 3, 4]
    assert [e["val/mse"] for e in history["epochs"]] == [0.5, 0.3, 0.4, 0.45]
    for entry in history["epochs"]:
        assert {"train/loss", "lr", "val/snr", "val/mse_f3"} <= entry.keys()
    assert history["best"]["val/mse"] == {"value": 0.3, "epoch": 2}
    assert history["best"]["train/loss"]["epoch"] == 4  # training itself still improved
    lines = [r.getMessage() for r in caplog.records if r.name == "ignite_lstm" and r.getMessage().startswith("Epoch ")]
    assert [line.split()[1] for line in lines] == ["1/6", "2/6", "3/6", "4/6"]
    assert all("train/loss=" in line and "val/mse=" in line for line in lines)

    events = read_events(run_dir / "tb")
    assert [s for s, _ in events["val/mse"]] == [1, 2, 3, 4]
    assert {"train/loss", "lr/group_0", "train/grad_norm", "train/epoch_loss", "train/window_loss"} <= events.keys()
