"""launch: what a rank reports (done, refused, disk-full) and which report decides the exit status.

``_worker`` runs here in this process, as it runs on one process or on each of torchrun's
(``plan=None``: rank 0 claims the run folder itself); the outcome goes into a queue.
"""

from __future__ import annotations

import errno
import os
import queue
from pathlib import Path

import pytest
import torch
from conftest import quick_folder
from ignite.engine import Events

from ignite_lstm.app.config.schema import load_config
from ignite_lstm.app.run.launch import _deciding, _disk_full_message, _reported, _worker, launch
from ignite_lstm.app.run.rundir import prepare_run
from ignite_lstm.app.run.training import Outcome
from ignite_lstm.app.task.dataset import split_params
from ignite_lstm.app.task.h5io import split_filename


@pytest.fixture(autouse=True)
def _restore_threads():
    """``_worker`` sets the config's thread count (conftest restores the train.log handler it adds)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return quick_folder(tmp_path_factory, "launch")


def _cfg(folder, tmp_path, *overrides):
    config, data = folder
    return load_config(
        config, ["data.train.mixtures=2", f"data.dir={data}", f"output_dir={tmp_path / 'runs'}", "name=x", *overrides]
    )


def _work(cfg, plan, launched=False):
    """``_worker`` on this process; returns the reports it queued."""
    outcomes = queue.SimpleQueue()
    _worker(0, cfg, "quick", plan, outcomes, launched)
    return _reported(outcomes)


def full_disk(trainer, evaluator, config) -> None:
    """``handlers.extra`` entry: at the end of epoch ``$FULL_AT`` a write into the run folder fails with
    ``$FULL_ERRNO`` (ENOSPC, EDQUOT, EACCES), as a full disk makes ``atomic_write`` fail."""

    @trainer.on(Events.EPOCH_COMPLETED(once=int(os.environ["FULL_AT"])))
    def _fail(_):
        code = getattr(errno, os.environ["FULL_ERRNO"])
        raise OSError(code, os.strerror(code), str(Path(config.output_dir) / config.name / "history.json"))


def test_a_run_that_ends_normally_reports_done(folder, tmp_path):
    cfg = _cfg(folder, tmp_path)
    [(rank, outcome)] = _work(cfg, prepare_run(cfg, "quick"))
    assert (rank, outcome.status, outcome.epochs) == (0, "done", 2)
    assert "Epoch 2/2" in (tmp_path / "runs" / "x" / "train.log").read_text()


def test_a_folder_that_holds_a_run_is_refused_when_the_worker_claims_it(folder, tmp_path):
    cfg = _cfg(folder, tmp_path)
    _work(cfg, None)  # torchrun's way: rank 0 claims the folder
    [(_, outcome)] = _work(cfg, None)
    assert (outcome.status, outcome.exit_code) == ("refused", 2)
    assert outcome.message.startswith(f"Run folder {tmp_path / 'runs' / 'x'} already holds a run; pass resume=auto")


def test_a_bad_data_file_is_refused_and_the_folder_the_worker_claimed_is_removed(folder, tmp_path):
    data = tmp_path / "data"
    cfg = _cfg(folder, tmp_path, f"data.dir={data}")
    data.mkdir()
    bad = data / split_filename("train", split_params(cfg.data, "train"))
    bad.write_bytes(b"not an HDF5 file\n")
    [(_, outcome)] = _work(cfg, None)
    assert outcome.status == "refused" and outcome.message.startswith(f"Data file {bad} ")
    assert not (tmp_path / "runs").exists()  # nothing blocks the same command again
    assert bad.read_bytes() == b"not an HDF5 file\n"


@pytest.mark.parametrize("code", ["ENOSPC", "EDQUOT"])
def test_a_full_disk_reports_disk_full_with_the_file_and_the_checkpoint_to_resume(folder, tmp_path, monkeypatch, code):
    monkeypatch.setenv("FULL_AT", "2")
    monkeypatch.setenv("FULL_ERRNO", code)
    cfg = _cfg(folder, tmp_path, "handlers.extra=[test_launch:full_disk]")
    [(_, outcome)] = _work(cfg, prepare_run(cfg, "quick"))
    run_dir = tmp_path / "runs" / "x"
    assert (outcome.status, outcome.exit_code) == ("disk-full", 1)
    assert outcome.message == (
        f"{os.strerror(getattr(errno, code))} while writing {run_dir / 'history.json'} (folder {run_dir}); training "
        f"stopped. The last complete checkpoint is {run_dir / 'checkpoints' / 'last_checkpoint_4.pt'}: free some "
        f"space, then continue with resume=auto."
    )


def test_a_launched_rank_reports_then_fails_so_that_torch_stops_the_others(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("FULL_AT", "1")
    monkeypatch.setenv("FULL_ERRNO", "ENOSPC")
    cfg = _cfg(folder, tmp_path, "handlers.extra=[test_launch:full_disk]")
    outcomes = queue.SimpleQueue()
    with pytest.raises(OSError, match="No space left on device"):
        _worker(0, cfg, "quick", prepare_run(cfg, "quick"), outcomes, True)
    [(_, outcome)] = _reported(outcomes)
    assert outcome.status == "disk-full" and outcome.message.endswith(
        "last_checkpoint_2.pt: free some space, then continue with resume=auto."
    )


def test_another_os_error_is_no_outcome_but_a_crash(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("FULL_AT", "1")
    monkeypatch.setenv("FULL_ERRNO", "EACCES")
    cfg = _cfg(folder, tmp_path, "handlers.extra=[test_launch:full_disk]")
    outcomes = queue.SimpleQueue()
    with pytest.raises(PermissionError):
        _worker(0, cfg, "quick", prepare_run(cfg, "quick"), outcomes, False)
    assert _reported(outcomes) == []


def test_the_disk_full_message_without_a_run_folder_or_a_checkpoint(tmp_path):
    exc = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "data" / "train.h5"))
    assert _disk_full_message(exc, None) == (
        f"No space left on device while writing {tmp_path / 'data' / 'train.h5'} "
        f"(folder {tmp_path / 'data'}); training stopped."
    )
    plan = {"run_dir": str(tmp_path / "run")}
    assert _disk_full_message(OSError(errno.ENOSPC, "No space left on device"), plan) == (
        f"No space left on device while writing a file (folder {tmp_path / 'run'}); training stopped. No checkpoint "
        f"had been written yet."
    )


def test_the_lowest_rank_that_is_not_done_decides_else_rank_0():
    done, diverged, refused = Outcome("done", epochs=2), Outcome("diverged", "nan"), Outcome("refused", "bad")
    assert _deciding([]) is None
    assert _deciding([(0, done), (1, Outcome("done"))]) is done
    assert _deciding([(0, done), (1, diverged)]) is diverged
    assert _deciding([(0, done), (1, refused), (2, diverged)]) is refused
    reports = queue.SimpleQueue()
    for report in ((2, diverged), (0, done), (1, refused)):
        reports.put(report)
    assert _reported(reports) == [(0, done), (1, refused), (2, diverged)]  # by rank, whatever the order of arrival


def test_launch_on_one_process_returns_the_outcome_of_the_run(folder, tmp_path):
    cfg = _cfg(folder, tmp_path)
    outcome = launch(cfg, "quick", prepare_run(cfg, "quick"), None)
    assert (outcome.status, outcome.exit_code) == ("done", 0)
    assert (tmp_path / "runs" / "x" / "metrics.json").is_file()
