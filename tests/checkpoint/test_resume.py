"""Exact resume: a real run.py subprocess killed by SIGKILL, continued with resume=auto, equals a run left alone."""

import json
import pickle
import re
import signal

import pytest
import torch
from handler_helpers import (
    ITERATIONS_PER_EPOCH,
    KILL_AT,
    assert_same_history,
    background_runs,
    history,
    reference_run,
    run_cli,
    tiny_args,
)

from ignite_lstm.checkpoint.files import CheckpointMismatch, read_checkpoint
from ignite_lstm.models.lstm import load_model


@pytest.fixture(scope="module", autouse=True)
def killed(tmp_path_factory):
    """A run.py subprocess (started early, see ``background_runs``) paused in training at the end of
    iteration ``KILL_AT``, mid-epoch 3, where it waits to be killed."""
    return background_runs(tmp_path_factory)["killed"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return reference_run(tmp_path_factory)


def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_the_training_checkpoint_holds_everything_needed_to_continue(reference):
    checkpoints = reference / "checkpoints"
    last = torch.load(checkpoints / f"last_checkpoint_{4 * ITERATIONS_PER_EPOCH}.pt", weights_only=True)
    assert set(last) == {
        "model",
        "model_args",
        "optimizer",
        "trainer",
        "lr_scheduler",
        "early_stopping",
        "history",
        "rng",
        "rng_epoch_start",
        "loader_rng",  # the DataLoader's own generators (none here: an empty list)
        "epoch_loss",
        "config",
        "checkpointer",
        "checkpointer_best",
        "checkpointer_interrupted",
    }
    assert last["trainer"]["iteration"] == 4 * ITERATIONS_PER_EPOCH
    assert last["optimizer"]["state"]
    warmup, cosine = last["lr_scheduler"]["schedulers"]  # the 8 warm-up steps, then 25 steps of cosine
    assert last["lr_scheduler"]["_scheduler_index"] == 1 and cosine["event_index"] == 4 * 8 - 7
    assert last["early_stopping"]["counter"] == 0  # val mse improved every epoch
    assert set(last["rng"]) >= {"torch", "numpy", "python"}
    assert [e["epoch"] for e in last["history"]["epochs"]] == [1, 2, 3, 4]
    assert last["config"]["model"] == {  # the resolved config
        "hidden_size": 8,
        "num_layers": 2,
        "dropout": 0.3,
        "init": "chrono",
        "chrono_t_max": 1000.0,
        "chrono_fraction": 1.0,
    }
    assert last["config"]["train"]["epochs"] == 4 and last["config"]["data"]["dir"].endswith("data")
    best = next(checkpoints.glob("best_*.pt"))
    model, rest = load_model(best)
    assert model.config == last["model_args"] and rest == {}


def test_resume_with_another_model_shape_is_refused_before_anything_is_written(reference, capsys):
    before = _listing(reference)
    last = next((reference / "checkpoints").glob("last_*.pt"))
    code = run_cli(
        tiny_args(
            reference.parent.parent / "data",
            reference.parent,
            "reference",
            "model.hidden_size=16",
            "train.epochs=6",
            f"resume={last}",
        )
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "this config changes the model shape (hidden_size: checkpoint 8, this config 16)" in err
    assert _listing(reference) == before


def test_resume_of_a_finished_run_or_from_a_model_file_is_refused(reference, capsys):
    before = _listing(reference)
    args = tiny_args(reference.parent.parent / "data", reference.parent, "reference")
    last = next((reference / "checkpoints").glob("last_checkpoint_*.pt"))
    assert run_cli([*args, f"resume={last}"]) == 2  # resume=PATH of a finished run: refused as before
    assert "is the end of a finished run (epoch 4 of train.epochs=4); pass train.epochs=N" in capsys.readouterr().err
    # resume=auto: nothing to do, and the command succeeds (a preemption loop that re-runs it ends; issue 26)
    assert run_cli([*args, "resume=auto"]) == 0
    out = capsys.readouterr().out
    assert f"resume=auto: the run in {reference} has finished, nothing to do (" in out
    assert "is the end of a finished run (epoch 4 of train.epochs=4)" in out
    best = next((reference / "checkpoints").glob("best_*.pt"))
    assert run_cli([*args, f"resume={best}"]) == 2
    assert "is not a training checkpoint" in capsys.readouterr().err
    assert _listing(reference) == before


def test_resume_from_an_empty_or_foreign_file_says_why(tmp_path, capsys):
    empty = tmp_path / "checkpoints" / "last_checkpoint_8.pt"
    empty.parent.mkdir()
    empty.write_bytes(b"")  # e.g. a copy that failed
    args = tiny_args(tmp_path / "data", tmp_path / "runs", "empty")
    assert run_cli([*args, f"resume={empty}"]) == 2
    assert f"Checkpoint {empty} could not be read: empty file (0 bytes)." in capsys.readouterr().err
    with pytest.raises(CheckpointMismatch, match=re.escape(f"Checkpoint {empty} could not be read: empty file")):
        read_checkpoint(empty)
    foreign = tmp_path / "foreign.pt"
    foreign.write_bytes(pickle.dumps({"model": [1, 2]}, protocol=4))
    with pytest.raises(CheckpointMismatch) as info:
        read_checkpoint(foreign)
    assert str(info.value).startswith(f"Checkpoint {foreign} is not a checkpoint written by ignite_lstm: it holds ")
    assert "weights_only" not in str(info.value)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["checkpoints", "foreign.pt", "last_checkpoint_8.pt"]


def test_a_run_killed_by_sigkill_resumes_to_the_same_metrics_as_a_run_left_alone(killed, reference):
    assert KILL_AT == 2 * ITERATIONS_PER_EPOCH + 1
    killed.wait_until_paused()
    killed.proc.send_signal(signal.SIGKILL)
    assert killed.proc.wait(timeout=60) == -signal.SIGKILL
    run_dir = killed.run_dir
    files = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert f"last_checkpoint_{2 * ITERATIONS_PER_EPOCH}.pt" in files and len(files) == 2  # and one best_
    assert [e["epoch"] for e in history(run_dir)] == [1, 2]

    assert run_cli(tiny_args(killed.data_dir, killed.output_dir, killed.name, "resume=auto")) == 0

    assert_same_history(history(run_dir), history(reference), tol=1e-6)
    resumed = json.loads((run_dir / "metrics.json").read_text())
    expected = json.loads((reference / "metrics.json").read_text())
    assert resumed == pytest.approx(expected, rel=1e-6)
    saved = json.loads((run_dir / "history.json").read_text())["best"]
    assert saved == json.loads((reference / "history.json").read_text())["best"]
    # the resumed run kept counting n_saved=1: the killed run's epoch-2 file was replaced, not left behind
    files = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert [f for f in files if f.startswith("last_")] == [f"last_checkpoint_{4 * ITERATIONS_PER_EPOCH}.pt"]
    assert len([f for f in files if f.startswith("best_")]) == 1
