"""Handlers around the loop: checkpoints, early stopping, TensorBoard, progress, Ctrl-C, all deterministic."""

import io
import json
import logging
import math
import os
import signal
import struct

import pytest
import torch
from handler_helpers import ITERATIONS_PER_EPOCH, run_cli, tiny_args
from ignite.engine import Engine, Events
from ignite.metrics import Average, RunningAverage
from tensorboardX.proto import event_pb2
from torch.utils.data import DataLoader, TensorDataset

from ignite_lstm.checkpointing import FixedState
from ignite_lstm.engines import TimeEvents, create_evaluator, create_trainer
from ignite_lstm.handlers import (
    StopOnInterrupt,
    attach_checkpoints,
    attach_early_stopping,
    attach_progress,
    attach_tensorboard,
)
from ignite_lstm.metrics import build_metrics
from ignite_lstm.models import StatefulLSTM, load_model


def _scripted(trainer: Engine, name: str, values) -> Engine:
    """A validation evaluator whose metric ``name`` is ``values[epoch - 1]``, run after every epoch."""
    evaluator = Engine(lambda e, b: None)
    evaluator.add_event_handler(Events.EPOCH_COMPLETED,
                                lambda e: e.state.metrics.__setitem__(name, values[trainer.state.epoch - 1]))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run([0]))
    return evaluator


# --- checkpoints ---------------------------------------------------------------------------------------


def _marked_model_trainer():
    """One iteration per epoch; the model's output bias equals the epoch, to identify saved weights."""
    model = StatefulLSTM(input_size=2, hidden_size=4)

    def step(engine, batch):
        with torch.no_grad():
            model.head.bias.fill_(float(engine.state.epoch))

    return model, Engine(step)


@pytest.mark.parametrize("monitor,best_epochs,label", [
    ("mse", [4, 2], "neg_val_mse"),  # lower is better: 0.2 (epoch 4), then 0.3 (epoch 2)
    ("snr", [5, 1], "val_snr"),  # higher is better: 0.6 (epoch 5), then 0.5 (epoch 1)
])
def test_best_last_and_every_n_checkpoints_keep_n_saved_each(tmp_path, monitor, best_epochs, label):
    model, trainer = _marked_model_trainer()
    evaluator = _scripted(trainer, monitor, [0.5, 0.3, 0.4, 0.2, 0.6])
    model_args = FixedState(model.config, "model arguments")
    to_save = {"model": model, "model_args": model_args, "trainer": trainer}
    checkpoints = attach_checkpoints(trainer, evaluator, to_save, {"model": model, "model_args": model_args},
                                     tmp_path, monitor=monitor, n_saved=2, every=2)
    trainer.run([0], max_epochs=5)

    names = sorted(p.name for p in tmp_path.iterdir())
    best = sorted(n for n in names if n.startswith("best_"))
    assert [int(n.split("_")[2]) for n in best] == sorted(best_epochs)  # iteration == epoch here
    assert all(f"_{label}=" in n for n in best)
    assert [n for n in names if not n.startswith("best_")] == [
        "epoch_checkpoint_2.pt", "epoch_checkpoint_4.pt", "last_checkpoint_4.pt", "last_checkpoint_5.pt"]
    top = checkpoints["best"].last_checkpoint
    assert int(top.name.split("_")[2]) == best_epochs[0]
    for name in best:  # the best files are model files for load_model, holding that epoch's weights
        loaded, rest = load_model(tmp_path / name)
        assert loaded.config == model.config and rest == {}
        assert loaded.head.bias.item() == int(name.split("_")[2])
    last = torch.load(tmp_path / "last_checkpoint_5.pt", weights_only=True)
    assert last["trainer"]["iteration"] == 5 and last["model"]["head.bias"].item() == 5.0
    # each training file knows every saver's files, its own included, for a resumed run to keep counting
    assert [f for _, f in last["checkpointer"]["_saved"]] == ["last_checkpoint_4.pt", "last_checkpoint_5.pt"]
    assert sorted(f for _, f in last["checkpointer_best"]["_saved"]) == best
    assert [f for _, f in last["checkpointer_epoch"]["_saved"]] == ["epoch_checkpoint_2.pt", "epoch_checkpoint_4.pt"]


class _FailsAt:
    """A checkpoint entry that cannot be pickled from epoch ``epoch`` on (a failing write)."""

    def __init__(self, trainer: Engine, epoch: int) -> None:
        self.trainer, self.epoch = trainer, epoch

    def state_dict(self):
        return {"ok": 1} if self.trainer.state.epoch < self.epoch else {"bad": lambda: 0}

    def load_state_dict(self, state):
        pass


def test_a_failed_checkpoint_write_leaves_no_partial_file_and_keeps_the_previous_one(tmp_path):
    model, trainer = _marked_model_trainer()
    evaluator = _scripted(trainer, "mse", [0.5, 0.4])
    attach_checkpoints(trainer, evaluator, {"model": model, "trainer": trainer, "flaky": _FailsAt(trainer, 2)},
                       {"model": model}, tmp_path, n_saved=1)
    with pytest.raises(Exception, match="pickle"):
        trainer.run([0], max_epochs=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert [n for n in names if not n.startswith("best_")] == ["last_checkpoint_1.pt"]  # no last_checkpoint_2.pt
    assert torch.load(tmp_path / "last_checkpoint_1.pt", weights_only=True)["trainer"]["iteration"] == 1


# --- early stopping --------------------------------------------------------------------------------------


def _early_stopping_run(monitor, script, *, patience, min_delta=0.0, epochs=None, stopper_state=None):
    trainer = Engine(lambda e, b: None)
    evaluator = _scripted(trainer, monitor, script)
    stopper = attach_early_stopping(trainer, evaluator, monitor=monitor, patience=patience, min_delta=min_delta)
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


def test_early_stopping_state_survives_a_weights_only_checkpoint():
    script = [1.0, 0.9, 0.95, 0.97, 0.99, 0.98, 0.1]
    whole, _ = _early_stopping_run("mse", script, patience=3)
    assert whole.state.epoch == 5
    first, stopper = _early_stopping_run("mse", script, patience=3, epochs=3)
    buffer = io.BytesIO()
    torch.save({"trainer": first.state_dict(), "early_stopping": stopper.state_dict()}, buffer)
    buffer.seek(0)
    resumed, _ = _early_stopping_run("mse", script, patience=3, epochs=len(script),
                                     stopper_state=torch.load(buffer, weights_only=True))
    assert resumed.state.epoch == 5


# --- TensorBoard ----------------------------------------------------------------------------------------


def read_events(log_dir) -> dict[str, list[tuple[int, float | None]]]:
    """Every summary value of the event files: tag -> [(step, scalar or None for a histogram)]."""
    values: dict[str, list] = {}
    for name in sorted(os.listdir(log_dir)):
        data = (log_dir / name).read_bytes()
        pos = 0
        while pos < len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
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
    expected = [(k, pytest.approx(sum(windows[k - 3:k]) / 3, rel=1e-6)) for k in range(3, 41, 3)]
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
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.__setitem__(e.state.iteration,
                                                                                        dict(e.state.output)))
    trainer.add_event_handler(TimeEvents.WINDOW_COMPLETED, lambda e: windows.append(e.state.window_loss.item()))
    attach_tensorboard(trainer, evaluator, optimizer, tmp_path, every=2, window_every=3, histograms=True,
                       model=model)
    trainer.run(loader, max_epochs=2)

    events = read_events(tmp_path)
    for tag, key in (("train/loss", "loss"), ("train/grad_norm", "grad_norm")):
        assert events[tag] == [(i, pytest.approx(outputs[i][key], rel=1e-6)) for i in (2, 4)]
    assert [s for s, _ in events["lr/group_0"]] == [2, 4]
    assert [s for s, _ in events["train/epoch_loss"]] == [1, 2]
    for name, value in evaluator.state.metrics.items():  # every validation metric, once per epoch
        assert [s for s, _ in events[f"val/{name}"]] == [1, 2]
        assert events[f"val/{name}"][-1][1] == pytest.approx(value, rel=1e-6)
    assert len(evaluator.state.metrics) == 6 + 2  # mse ... snr, mse_f1, mse_f3
    assert len(windows) == 16
    group_means = [sum(windows[k - 3:k]) / 3 for k in (3, 6, 9, 12, 15)]
    assert events["train/window_loss"] == [(k, pytest.approx(m, rel=1e-6)) for k, m in zip((3, 6, 9, 12, 15),
                                                                                            group_means)]
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


# --- Ctrl-C ----------------------------------------------------------------------------------------------


def _interrupted_run(sigint_at: int, signals: int = 1):
    """3 iterations per epoch; a real SIGINT to this process at the end of iteration ``sigint_at``."""
    trainer = Engine(lambda e, b: None)
    epochs_done = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: epochs_done.append(e.state.epoch))

    @trainer.on(Events.ITERATION_COMPLETED(once=sigint_at))
    def _press(_):
        for _ in range(signals):
            os.kill(os.getpid(), signal.SIGINT)

    previous = signal.getsignal(signal.SIGINT)
    stop = StopOnInterrupt(trainer)
    try:
        trainer.run(range(3), max_epochs=3)
    finally:
        stop.close()
    assert signal.getsignal(signal.SIGINT) is previous
    return trainer, stop, epochs_done


def test_ctrl_c_mid_epoch_stops_after_the_current_iteration():
    trainer, stop, epochs_done = _interrupted_run(sigint_at=5)
    assert stop.requested and trainer.state.interrupt_requested
    assert trainer.state.iteration == 5 and epochs_done == [1]  # epoch 2 stopped before its end


def test_ctrl_c_in_the_last_iteration_of_an_epoch_lets_the_epoch_handlers_run_first():
    trainer, stop, epochs_done = _interrupted_run(sigint_at=6)
    assert stop.requested and trainer.state.iteration == 6 and epochs_done == [1, 2]


def test_a_second_ctrl_c_aborts_at_once():
    with pytest.raises(KeyboardInterrupt):
        _interrupted_run(sigint_at=2, signals=2)


# --- the handlers section end to end ---------------------------------------------------------------------


def test_early_stopping_restores_the_best_weights_and_history_and_log_record_every_epoch(
        tmp_path, monkeypatch, caplog):
    """Scripted validation mse 0.5, 0.3, 0.4, 0.45: best at epoch 2, no improvement twice -> stop after 4."""
    monkeypatch.setenv("SCRIPT", "mse:0.5,0.3,0.4,0.45,0.2,0.1")
    caplog.set_level(logging.INFO, logger="ignite_lstm")
    run_dir = tmp_path / "runs" / "es"
    code = run_cli(tiny_args(tmp_path / "data", tmp_path / "runs", "es", "train.epochs=6",
                             "handlers.early_stopping.patience=2", "handlers.extra=[handler_helpers:scripted_metric]"))
    assert code == 0
    files = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    best_iteration, last_iteration = 2 * ITERATIONS_PER_EPOCH, 4 * ITERATIONS_PER_EPOCH
    assert files == [f"best_checkpoint_{best_iteration}_neg_val_mse=-0.3000.pt",
                     f"last_checkpoint_{last_iteration}.pt"]
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
