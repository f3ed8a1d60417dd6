"""training: ``run`` in this process (no ``run.py``): done with its metrics, interrupted with a checkpoint,
diverged; ``setup`` builds the run's parts.

A run here is the quick config on 2 training mixtures (2 iterations per epoch, 2 epochs) in a run
folder made by hand (``rundir.prepare_run`` is the CLI's). The signals are real: the
``handler_helpers`` entries send them to this process at one exact iteration.
"""

from __future__ import annotations

import json
import math
import signal

import pytest
import torch
from conftest import load_quick, quick_folder
from ignite.utils import manual_seed

from ignite_lstm.app.run import training
from ignite_lstm.app.task.model import setup_model
from ignite_lstm.checkpoint.files import CheckpointMismatch
from ignite_lstm.checkpoint.resume import SkipBatches
from ignite_lstm.models.lstm import StatefulLSTM, load_model


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The quick config and its data folder, shared by the tests of this module."""
    return quick_folder(tmp_path_factory, "training")


_cfg = load_quick


def _run_dir(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    return run_dir


def test_a_run_that_ends_normally_is_done_with_every_final_metric_and_its_files(folder, tmp_path):
    run_dir = _run_dir(tmp_path)
    outcome = training.run(0, _cfg(folder), str(run_dir))
    assert (outcome.status, outcome.exit_code, outcome.epochs, outcome.run_dir) == ("done", 0, 2, str(run_dir))
    assert math.isfinite(outcome.epoch_seconds) and outcome.epoch_seconds > 0
    assert {"train/mse", "val/snr", "test/mse_f3", "test/corr_f7"} <= set(outcome.metrics)
    assert all(math.isfinite(outcome.metrics[f"{split}/mse"]) for split in ("train", "val", "test"))
    assert json.loads((run_dir / "metrics.json").read_text()) == pytest.approx(outcome.metrics, rel=1e-12)
    assert [e["epoch"] for e in json.loads((run_dir / "history.json").read_text())["epochs"]] == [1, 2]
    model, rest = load_model(run_dir / "model.pt")
    assert model.hidden_size == 8 and rest["config"]["data"]["train"]["mixtures"] == 2
    assert not (run_dir / "report").exists()  # eval.report is false in the quick config


@pytest.mark.parametrize(
    "helper, env, signum, label",
    [
        ("ctrl_c", {"CTRL_C_AT": "3"}, signal.SIGINT, "Ctrl-C"),
        ("send_signals", {"SIGNALS": "SIGTERM", "SIGNALS_AT": "3"}, signal.SIGTERM, "SIGTERM"),
    ],
)
def test_an_interrupted_run_saves_its_checkpoint_and_resume_finishes_it(
    folder, tmp_path, monkeypatch, helper, env, signum, label
):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    run_dir = _run_dir(tmp_path)
    cfg = _cfg(folder, f"handlers.extra=[handler_helpers:{helper}]")
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    outcome = training.run(0, cfg, str(run_dir))
    checkpoint = run_dir / "checkpoints" / "interrupted_checkpoint_3.pt"
    assert (outcome.status, outcome.exit_code, outcome.signum) == ("interrupted", 128 + signum, signum)
    assert outcome.message == f"Training interrupted by {label} at epoch 2, iteration 3"
    assert outcome.checkpoint == str(checkpoint) and checkpoint.is_file()
    assert outcome.metrics == {} and not (run_dir / "metrics.json").exists() and not (run_dir / "model.pt").exists()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # handed back

    resumed = training.run(0, _cfg(folder), str(run_dir), str(checkpoint))  # iteration 3 is behind it
    assert (resumed.status, resumed.epochs) == ("done", 2) and (run_dir / "metrics.json").is_file()


def test_a_nan_loss_ends_the_run_as_diverged_naming_the_last_good_checkpoint(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("NAN_AT", "3")  # the first iteration of epoch 2
    run_dir = _run_dir(tmp_path)
    outcome = training.run(0, _cfg(folder, "handlers.extra=[handler_helpers:nan_batch]"), str(run_dir))
    assert (outcome.status, outcome.exit_code) == ("diverged", 3)
    assert outcome.message == (
        f"Loss became nan at epoch 2, iteration 3; training stopped. The last good checkpoint "
        f"is {run_dir / 'checkpoints' / 'last_checkpoint_2.pt'}. Lower train.lr or set "
        f"train.grad_clip."
    )
    assert outcome.metrics == {} and not (run_dir / "metrics.json").exists()


def test_a_nan_loss_without_checkpoints_says_none_was_kept(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("NAN_AT", "1")
    cfg = _cfg(folder, "handlers.extra=[handler_helpers:nan_batch]", "handlers.checkpoint.enabled=false")
    outcome = training.run(0, cfg, str(_run_dir(tmp_path)))
    assert outcome.status == "diverged"
    assert "training stopped. No checkpoint was kept (handlers.checkpoint.enabled is false)." in outcome.message


def test_setup_builds_the_parts_of_the_run_and_writes_no_results(folder, tmp_path):
    cfg = _cfg(
        folder, "train.optimizer=sgd", "train.lr=0.05", "train.momentum=0.5", "handlers.tensorboard.enabled=false"
    )
    run_dir = _run_dir(tmp_path)
    s = training.setup(cfg, run_dir)
    try:
        assert s.cfg is cfg and s.run_dir == run_dir and s.device == torch.device("cpu")
        assert set(s.data) >= {"train_loader", "eval_loaders", "datasets"}
        assert list(s.data["eval_loaders"]) == ["train", "val", "test"]
        assert s.model is s.net and isinstance(s.net, StatefulLSTM)  # one process: no DDP wrapper
        manual_seed(cfg.seed)
        expected = setup_model(cfg).state_dict()  # the seed comes first: the same initial weights
        assert all(torch.equal(v, expected[k]) for k, v in s.net.state_dict().items())
        optimizer = s.handlers.to_save["optimizer"]
        assert isinstance(optimizer, torch.optim.SGD)
        assert (optimizer.defaults["lr"], optimizer.defaults["momentum"]) == (0.05, 0.5)
        assert s.trainer.state.execution == "fused" and set(s.evaluators) == {"val", "final"}
        assert set(s.handlers.checkpoints) == {"best", "last", "interrupted"}
        assert {
            "model",
            "model_args",
            "optimizer",
            "trainer",
            "history",
            "rng",
            "config",
            "epoch_loss",
            "lr_scheduler",
        } <= set(s.handlers.to_save)
        assert isinstance(s.train_data, SkipBatches) and len(s.train_data) == len(s.data["train_loader"]) == 2
        assert not [p for p in run_dir.rglob("*") if p.is_file()]  # nothing written before the run starts
    finally:
        s.handlers.interrupt.close()


def test_a_checkpoint_of_another_model_shape_is_refused_before_any_setup(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("CTRL_C_AT", "1")
    run_dir = _run_dir(tmp_path)
    stopped = training.run(0, _cfg(folder, "handlers.extra=[handler_helpers:ctrl_c]"), str(run_dir))
    files = sorted(p for p in run_dir.rglob("*") if p.is_file())
    shape = r"changes the model shape \(hidden_size: checkpoint 8, this config 16\)"
    with pytest.raises(CheckpointMismatch, match=shape):
        training.run(0, _cfg(folder, "model.hidden_size=16"), str(run_dir), stopped.checkpoint)
    assert sorted(p for p in run_dir.rglob("*") if p.is_file()) == files  # not a file more (no event file either)
