"""Faults: NaN loss (exit 3), Ctrl-C (exit 130, exact resume), unwritable/full/taken output folders (exit 2)."""

import math
import shlex
import shutil
import signal

import pytest
import torch
from handler_helpers import (
    CONFIG,
    INTERRUPT_AT,
    ITERATIONS_PER_EPOCH,
    TINY,
    assert_same_history,
    background_runs,
    history,
    reference_run,
    run_cli,
    tiny_args,
)

from ignite_lstm import cli
from ignite_lstm.config import load_config
from ignite_lstm.models import load_model


@pytest.fixture(scope="module", autouse=True)
def ctrl_c_run(tmp_path_factory):
    """A run.py subprocess (started early, see ``background_runs``) waiting at the end of iteration
    ``INTERRUPT_AT``, the middle of epoch 2, for Ctrl-C."""
    return background_runs(tmp_path_factory)["ctrl_c"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return reference_run(tmp_path_factory)


def test_unwritable_output_folder_is_refused_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output folder should be")
    code = run_cli(tiny_args(tmp_path / "data", blocker / "runs", "x"))
    assert code == 2
    assert f"error: Output folder {blocker / 'runs' / 'x'} is not writable" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()  # no data generated, nothing trained


def test_full_output_folder_is_refused_before_anything_is_created(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "MIN_FREE_BYTES", shutil.disk_usage(tmp_path).free + 2**40)
    code = run_cli(tiny_args(tmp_path / "data", tmp_path / "runs", "x"))
    assert code == 2
    assert "MiB free; at least" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_folder_that_holds_a_run_is_never_overwritten(tmp_path, capsys):
    taken = tmp_path / "runs" / "taken"
    taken.mkdir(parents=True)
    (taken / "history.json").write_text("earlier run")
    code = run_cli(tiny_args(tmp_path / "data", tmp_path / "runs", "taken"))
    assert code == 2
    assert f"Run folder {taken} already holds a run; pass resume=auto to continue it" in capsys.readouterr().err
    assert [p.name for p in taken.iterdir()] == ["history.json"]
    assert (taken / "history.json").read_text() == "earlier run"
    # without a name, every run gets a folder of its own, even within the same second
    cfg = load_config(CONFIG, [*TINY, f"output_dir={tmp_path / 'runs'}"])
    first, second = cli.prepare_run(cfg, "base")["run_dir"], cli.prepare_run(cfg, "base")["run_dir"]
    assert first != second
    assert all(sorted(p.name for p in (tmp_path / "runs" / d).iterdir()) == ["config.yaml"] for d in (first, second))


def test_nan_loss_stops_with_exit_3_and_the_last_good_checkpoint_resumes(tmp_path, capsys, monkeypatch, reference):
    monkeypatch.setenv("NAN_AT", str(ITERATIONS_PER_EPOCH + 1))  # NaN inputs in the first iteration of epoch 2
    args = tiny_args(tmp_path / "data", tmp_path / "runs", "nan")
    assert run_cli([*args, "handlers.extra=[handler_helpers:nan_batch]"]) == 3
    run_dir = tmp_path / "runs" / "nan"
    last = run_dir / "checkpoints" / f"last_checkpoint_{ITERATIONS_PER_EPOCH}.pt"
    err = capsys.readouterr().err
    assert (f"error: Loss became nan at epoch 2, iteration {ITERATIONS_PER_EPOCH + 1}; training stopped. "
            f"The last good checkpoint is {last}. Lower train.lr or set train.grad_clip.") in err
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert [n for n in names if not n.startswith("best_")] == [last.name]  # nothing saved from the NaN epoch
    model, _ = load_model(last)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not (run_dir / "model.pt").exists() and not (run_dir / "metrics.json").exists()
    assert [e["epoch"] for e in history(run_dir)] == [1] and all(math.isfinite(v) for v in history(run_dir)[0].values())

    monkeypatch.delenv("NAN_AT")
    assert run_cli([*args, "resume=auto"]) == 0  # the kept checkpoint is whole: the run ends as if nothing happened
    assert_same_history(history(run_dir), history(reference))


def test_ctrl_c_saves_a_checkpoint_exits_130_with_a_resume_hint_and_resumes_exactly(ctrl_c_run, reference,
                                                                                    monkeypatch):
    assert INTERRUPT_AT == ITERATIONS_PER_EPOCH + 1
    ctrl_c_run.wait_until_paused()
    ctrl_c_run.proc.send_signal(signal.SIGINT)
    assert ctrl_c_run.proc.wait(timeout=120) == 130
    run_dir, log, marker = ctrl_c_run.run_dir, ctrl_c_run.log, ctrl_c_run.marker
    saved = run_dir / "checkpoints" / f"interrupted_checkpoint_{INTERRUPT_AT}.pt"
    hints = [line for line in log.read_text().splitlines() if "Resume with:" in line]
    assert len(hints) == 1
    assert hints[0].startswith(f"Training interrupted by Ctrl-C at epoch 2, iteration {INTERRUPT_AT}; "
                               f"checkpoint saved to {saved}. Resume with: python ")
    assert torch.load(saved, weights_only=True)["trainer"]["iteration"] == INTERRUPT_AT  # mid-epoch 2
    command = shlex.split(hints[0].split("Resume with: ")[1])
    assert command[-1] == f"resume={saved}" and command[1].endswith("run.py")

    monkeypatch.setenv("PAUSE_AT", str(INTERRUPT_AT))  # the hint repeats handlers.extra; its iteration is past
    monkeypatch.setenv("PAUSE_MARKER", str(marker))
    assert run_cli(command[2:]) == 0

    # Mid-epoch resume is exact too: the trained batches of epoch 2 are skipped, and the random
    # generators and the epoch-loss sums are restored where the interrupted run stood.
    assert_same_history(history(run_dir), history(reference), tol=1e-6)


def test_ctrl_c_in_the_last_iteration_still_finishes_the_run(tmp_path, monkeypatch, caplog, reference):
    """Nothing would be left to resume: the run ends normally, with its final evaluation."""
    monkeypatch.setenv("CTRL_C_AT", str(4 * ITERATIONS_PER_EPOCH))
    code = run_cli(tiny_args(tmp_path / "data", tmp_path / "runs", "late", "handlers.extra=[handler_helpers:ctrl_c]"))
    assert code == 0
    run_dir = tmp_path / "runs" / "late"
    assert (run_dir / "metrics.json").exists() and not list((run_dir / "checkpoints").glob("interrupted_*"))
    assert "Ctrl-C after the last epoch: finishing the final evaluation" in caplog.text
    assert_same_history(history(run_dir), history(reference))
