"""MetricsHistory: every epoch, the best value and epoch of each metric, checkpointable, atomic JSON."""

import io
import json
import math

import torch

from ignite_lstm.handlers.history import MetricsHistory


def _three_epochs() -> MetricsHistory:
    history = MetricsHistory()
    history.record(
        1, {"train/loss": 0.5, "val/mse": 0.40, "val/snr": 1.0, "val/corr": 0.2, "lr": 1e-3, "time/epoch_seconds": 2.0}
    )
    history.record(
        2, {"train/loss": 0.3, "val/mse": 0.45, "val/snr": 3.0, "val/corr": 0.1, "lr": 5e-4, "time/epoch_seconds": 1.0}
    )
    history.record(
        3, {"train/loss": 0.4, "val/mse": 0.35, "val/snr": 2.0, "val/corr": 0.3, "lr": 1e-4, "time/epoch_seconds": 3.0}
    )
    return history


def test_records_every_epoch_and_the_best_of_each_metric_in_its_direction():
    history = _three_epochs()
    assert [e["epoch"] for e in history.epochs] == [1, 2, 3]
    assert history.series("val/mse") == [0.40, 0.45, 0.35]
    assert history.best == {
        "train/loss": {"value": 0.3, "epoch": 2},  # lower is better
        "val/mse": {"value": 0.35, "epoch": 3},
        "val/snr": {"value": 3.0, "epoch": 2},  # higher is better
        "val/corr": {"value": 0.3, "epoch": 3},
    }  # no "best" learning rate or epoch time


def test_nan_is_recorded_but_never_best_and_per_frequency_keys_have_a_direction():
    history = MetricsHistory()
    history.record(1, {"val/mse": float("nan"), "val/mse_f3": 0.2})
    history.record(2, {"val/mse": 0.5, "val/mse_f3": 0.1})
    assert math.isnan(history.epochs[0]["val/mse"])
    assert history.best["val/mse"] == {"value": 0.5, "epoch": 2}
    assert history.best["val/mse_f3"] == {"value": 0.1, "epoch": 2}


def test_recording_an_epoch_again_merges_into_its_entry():
    history = MetricsHistory()
    history.record(1, {"train/loss": 0.5})
    history.record(1, {"val/mse": 0.4})
    assert history.epochs == [{"epoch": 1, "train/loss": 0.5, "val/mse": 0.4}]


def test_state_dict_survives_a_weights_only_checkpoint():
    history = _three_epochs()
    buffer = io.BytesIO()
    torch.save({"history": history.state_dict()}, buffer)
    buffer.seek(0)
    restored = MetricsHistory()
    restored.load_state_dict(torch.load(buffer, weights_only=True)["history"])
    assert restored.epochs == history.epochs and restored.best == history.best
    restored.record(4, {"val/mse": 0.1})  # a resumed run continues the same bookkeeping
    assert restored.best["val/mse"] == {"value": 0.1, "epoch": 4}


def test_save_writes_the_whole_history_as_json_and_leaves_no_temporary_file(tmp_path):
    history = _three_epochs()
    path = tmp_path / "history.json"
    history.save(path)
    assert json.loads(path.read_text()) == history.state_dict()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.json"]
