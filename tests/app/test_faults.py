"""Faults: NaN loss (exit 3), Ctrl-C (exit 130, exact resume), SIGTERM (exit 143, also on 2 processes),
unwritable/full/taken output folders (exit 2)."""

import logging
import math
import os
import shlex
import shutil
import signal
from pathlib import Path

import pytest
import torch
from handler_helpers import (
    CONFIG,
    INTERRUPT_AT,
    ITERATIONS_PER_EPOCH,
    TINY,
    TWO_PROCESSES,
    assert_same_history,
    background_runs,
    history,
    reference_run,
    run_cli,
    signal_runs,
    spawn_session,
    tiny_args,
    wait_for,
)

from ignite_lstm.app import cli
from ignite_lstm.app.config.schema import load_config
from ignite_lstm.app.run import rundir
from ignite_lstm.models.lstm import load_model


@pytest.fixture(scope="module", autouse=True)
def ctrl_c_run(tmp_path_factory):
    """A run.py subprocess (started early, see ``background_runs``) waiting at the end of iteration
    ``INTERRUPT_AT``, the middle of epoch 2, for Ctrl-C."""
    return background_runs(tmp_path_factory)["ctrl_c"]


@pytest.fixture(scope="module", autouse=True)
def sigterm_runs(tmp_path_factory):
    """The run.py subprocesses of the SIGTERM tests (see ``signal_runs``), started with the module."""
    return signal_runs(tmp_path_factory)


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
    monkeypatch.setattr(rundir, "MIN_FREE_BYTES", shutil.disk_usage(tmp_path).free + 2**40)
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
    assert (
        f"error: Loss became nan at epoch 2, iteration {ITERATIONS_PER_EPOCH + 1}; training stopped. "
        f"The last good checkpoint is {last}. Lower train.lr or set train.grad_clip."
    ) in err
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert [n for n in names if not n.startswith("best_")] == [last.name]  # nothing saved from the NaN epoch
    model, _ = load_model(last)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not (run_dir / "model.pt").exists() and not (run_dir / "metrics.json").exists()
    assert [e["epoch"] for e in history(run_dir)] == [1] and all(math.isfinite(v) for v in history(run_dir)[0].values())

    monkeypatch.delenv("NAN_AT")
    assert run_cli([*args, "resume=auto"]) == 0  # the kept checkpoint is whole: the run ends as if nothing happened
    assert_same_history(history(run_dir), history(reference))


def test_ctrl_c_saves_a_checkpoint_exits_130_with_a_resume_hint_and_resumes_exactly(ctrl_c_run, reference, monkeypatch):
    assert INTERRUPT_AT == ITERATIONS_PER_EPOCH + 1
    ctrl_c_run.wait_until_paused()
    ctrl_c_run.proc.send_signal(signal.SIGINT)
    assert ctrl_c_run.proc.wait(timeout=120) == 130
    run_dir, log, marker = ctrl_c_run.run_dir, ctrl_c_run.log, ctrl_c_run.marker
    saved = run_dir / "checkpoints" / f"interrupted_checkpoint_{INTERRUPT_AT}.pt"
    hints = [line for line in log.read_text().splitlines() if "Resume with:" in line]
    assert len(hints) == 1
    assert hints[0].startswith(
        f"Training interrupted by Ctrl-C at epoch 2, iteration {INTERRUPT_AT}; "
        f"checkpoint saved to {saved}. Resume with: python "
    )
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


def _resume_hint(log: Path, signal_label: str, iteration: int, saved: Path) -> list[str]:
    """The one resume line of a run.py output, checked; the command it gives (``python run.py ...``)."""
    hints = [line for line in log.read_text().splitlines() if "Resume with:" in line]
    assert len(hints) == 1, log.read_text()
    epoch = (iteration - 1) // ITERATIONS_PER_EPOCH + 1
    assert hints[0].startswith(
        f"Training interrupted by {signal_label} at epoch {epoch}, iteration {iteration}; "
        f"checkpoint saved to {saved}. Resume with: python "
    ), hints[0]
    command = shlex.split(hints[0].split("Resume with: ")[1])
    assert command[-1] == f"resume={saved}" and command[1].endswith("run.py")
    return command


def test_sigterm_saves_a_checkpoint_exits_143_with_a_resume_hint_and_resumes_exactly(
    sigterm_runs, reference, monkeypatch
):
    """What ``docker stop``, Kubernetes and SLURM send: handled as Ctrl-C is."""
    run = sigterm_runs["sigterm"]
    run.wait_until_paused()
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(timeout=120) == 143, run.log.read_text()
    saved = run.run_dir / "checkpoints" / f"interrupted_checkpoint_{INTERRUPT_AT}.pt"
    command = _resume_hint(run.log, "SIGTERM", INTERRUPT_AT, saved)
    assert torch.load(saved, weights_only=True)["trainer"]["iteration"] == INTERRUPT_AT  # mid-epoch 2
    assert "Traceback" not in run.log.read_text()

    monkeypatch.setenv("PAUSE_AT", str(INTERRUPT_AT))  # the hint repeats handlers.extra; its iteration is past
    monkeypatch.setenv("PAUSE_MARKER", str(run.marker))
    assert run_cli(command[2:]) == 0
    assert_same_history(history(run.run_dir), history(reference), tol=1e-6)


def test_a_second_sigterm_aborts_at_once_with_143_and_keeps_the_last_checkpoint(sigterm_runs):
    run = sigterm_runs["sigterm_twice"]
    run.wait_until_paused()
    run.proc.send_signal(signal.SIGTERM)
    wait_for(Path(f"{run.marker}.requested"), run.proc, run.log)  # the first one is seen, the run waits
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(timeout=120) == 143, run.log.read_text()
    lines = run.log.read_text().splitlines()
    assert lines[-1] == "error: aborted by SIGTERM"
    assert "Traceback" not in run.log.read_text() and not [line for line in lines if " ERROR " in line]
    names = sorted(p.name for p in (run.run_dir / "checkpoints").iterdir())
    assert [n for n in names if not n.startswith("best_")] == [f"last_checkpoint_{ITERATIONS_PER_EPOCH}.pt"]


def test_a_second_ctrl_c_aborts_in_one_line_without_ignites_error(tmp_path, monkeypatch, capsys, caplog):
    """Ignite's Engine logs every exception that ends a run ("Engine run is terminating due to exception"):
    not this one, which the CLI reports itself."""
    monkeypatch.setenv("SIGNALS_AT", str(INTERRUPT_AT))
    monkeypatch.setenv("SIGNALS", "SIGINT,SIGINT")
    args = tiny_args(tmp_path / "data", tmp_path / "runs", "twice", "handlers.extra=[handler_helpers:send_signals]")
    assert run_cli(args) == 130
    err = capsys.readouterr().err
    assert "Engine run is terminating" not in err and not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "Traceback" not in err
    assert err.count("error: aborted by Ctrl-C") == 1 and err.endswith("error: aborted by Ctrl-C\n")
    checkpoints = tmp_path / "runs" / "twice" / "checkpoints"
    assert not list(checkpoints.glob("interrupted_*")) and (checkpoints / "last_checkpoint_2.pt").exists()


def test_sigterm_to_the_launcher_of_two_processes_stops_both_and_resume_continues(sigterm_runs, tmp_path):
    """``docker stop`` and Kubernetes signal the launcher alone: it forwards the signal to both ranks,
    which stop at the same iteration; rank 0 alone writes the checkpoint. The resumed run is then
    signalled as SLURM does, the launcher and both ranks at once: each rank gets it twice (directly
    and forwarded), which must not count as a second signal (an abort)."""
    run = sigterm_runs["two_sigterm"]
    run.wait_until_paused()
    run.proc.send_signal(signal.SIGTERM)  # the launcher only
    assert run.proc.wait(timeout=120) == 143, run.log.read_text()
    output = run.log.read_text()
    assert "Traceback" not in output and "error:" not in output
    assert [Path(f"{run.log}.stopped.{rank}").read_text() for rank in (0, 1)] == [str(INTERRUPT_AT)] * 2
    saved = run.run_dir / "checkpoints" / f"interrupted_checkpoint_{INTERRUPT_AT}.pt"
    assert sorted(p.name for p in (run.run_dir / "checkpoints").glob("interrupted_*")) == [saved.name]
    command = _resume_hint(run.log, "SIGTERM", INTERRUPT_AT, saved)

    later = INTERRUPT_AT + ITERATIONS_PER_EPOCH  # mid-epoch 3 of the resumed run
    marker, log, stopped = tmp_path / "paused", tmp_path / "resumed.log", tmp_path / "stopped"
    resumed = spawn_session(
        command[2:], {"PAUSE_AT": str(later), "PAUSE_MARKER": str(marker), "STOP_RECORD": str(stopped)}, log
    )
    wait_for(marker, resumed, log)
    os.killpg(resumed.pid, signal.SIGTERM)  # the launcher and both ranks
    assert resumed.wait(timeout=120) == 143, log.read_text()
    output = log.read_text()
    assert f"Resumed from {saved} at epoch 1, iteration {INTERRUPT_AT} (1 of 2 batches of epoch 2 done)" in output
    assert "Traceback" not in output and "error:" not in output
    assert [Path(f"{stopped}.{rank}").read_text() for rank in (0, 1)] == [str(later)] * 2
    latest = run.run_dir / "checkpoints" / f"interrupted_checkpoint_{later}.pt"
    assert sorted(p.name for p in (run.run_dir / "checkpoints").glob("interrupted_*")) == [latest.name]
    _resume_hint(log, "SIGTERM", later, latest)
    assert [e["epoch"] for e in history(run.run_dir)] == [1, 2]


@pytest.mark.slow
def test_a_second_sigterm_to_the_launcher_of_two_processes_aborts_at_once(tmp_path):
    """The launcher ends the ranks itself (they count no signal twice); no new checkpoint, no traceback."""
    marker, log = tmp_path / "paused", tmp_path / "run.log"
    args = tiny_args(
        tmp_path / "data", tmp_path / "runs", "twice", "handlers.extra=[handler_helpers:hold]", *TWO_PROCESSES
    )
    proc = spawn_session(args, {"PAUSE_AT": str(INTERRUPT_AT), "PAUSE_MARKER": str(marker)}, log)
    wait_for(marker, proc, log)
    proc.send_signal(signal.SIGTERM)
    wait_for(Path(f"{marker}.requested"), proc, log)  # forwarded: a rank has seen it, both wait
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, log.read_text()
    output = log.read_text()
    assert output.count("error: aborted by SIGTERM") == 1 and "Traceback" not in output
    names = sorted(p.name for p in (tmp_path / "runs" / "twice" / "checkpoints").iterdir())
    assert [n for n in names if not n.startswith("best_")] == [f"last_checkpoint_{ITERATIONS_PER_EPOCH}.pt"]
