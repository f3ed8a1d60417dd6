"""Run folders: claimed atomically by launches at the same moment, never a dead end after a kill or a
crash before the first checkpoint, and nothing left behind by a start-up that fails."""

from __future__ import annotations

import logging
import multiprocessing
import shutil
import signal
import time
from pathlib import Path

import pytest
from handler_helpers import (
    CONFIG,
    TINY,
    assert_same_history,
    history,
    reference_run,
    run_cli,
    spawn_cli,
    tiny_args,
    wait_for,
)

from ignite_lstm.app import cli
from ignite_lstm.app.config.schema import load_config
from ignite_lstm.app.run.rundir import NothingToDo
from ignite_lstm.app.task.dataset import split_params
from ignite_lstm.app.task.h5io import split_filename

LAUNCHES = 4
EXTRA = "handlers.extra=[handler_helpers:pause,handler_helpers:raise_at_attach]"


@pytest.fixture(scope="module", autouse=True)
def killed_early(tmp_path_factory):
    """A run.py subprocess paused at the end of its first iteration, before the first checkpoint (the end
    of epoch 1); started first, so that its start-up (imports) overlaps with the tests before it."""
    root = tmp_path_factory.mktemp("killed-early")
    marker, log = root / "paused", root / "run.log"
    args = tiny_args(root / "data", root / "runs", "early", EXTRA)
    proc = spawn_cli(args, {"PAUSE_AT": "1", "PAUSE_MARKER": str(marker)}, log)
    yield {"proc": proc, "args": args, "run_dir": root / "runs" / "early", "marker": marker, "log": log}
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return reference_run(tmp_path_factory)


def _claim(cfg, start, results) -> None:
    """One launch: wait for the others, then choose and claim a run folder."""
    start.wait()
    try:
        results.put(("ok", cli.prepare_run(cfg, "base")["run_dir"]))
    except Exception as exc:  # noqa: BLE001  (reported to the test, whatever it is)
        results.put((type(exc).__name__, str(exc)))


def _launch_at_once(cfg) -> list[tuple[str, str]]:
    """``prepare_run`` in ``LAUNCHES`` forked processes released together by a barrier."""
    ctx = multiprocessing.get_context("fork")
    start, results = ctx.Barrier(LAUNCHES), ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(cfg, start, results)) for _ in range(LAUNCHES)]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    return outcomes


ROUNDS = 3  # each round is a fresh race (a fraction of a second: forked processes, no training)


def test_launches_at_the_same_moment_get_a_run_folder_each(tmp_path):
    for round_ in range(ROUNDS):
        out = tmp_path / str(round_) / "runs"  # does not exist yet: the launches also race to create it
        outcomes = _launch_at_once(load_config(CONFIG, [*TINY, f"output_dir={out}"]))
        assert [kind for kind, _ in outcomes] == ["ok"] * LAUNCHES, outcomes
        folders = {run_dir for _, run_dir in outcomes}
        assert len(folders) == LAUNCHES, outcomes
        assert sorted(p.name for p in out.iterdir()) == sorted(Path(p).name for p in folders)
        for folder in out.iterdir():
            assert [p.name for p in folder.iterdir()] == ["config.yaml"]
            assert load_config(folder / "config.yaml").output_dir == str(out)


def test_of_launches_with_one_name_at_the_same_moment_exactly_one_wins(tmp_path):
    for round_ in range(ROUNDS):
        out = tmp_path / str(round_) / "runs"
        outcomes = _launch_at_once(load_config(CONFIG, [*TINY, f"output_dir={out}", "name=x"]))
        assert sorted(kind for kind, _ in outcomes) == ["RunDirError"] * (LAUNCHES - 1) + ["ok"], outcomes
        assert [run_dir for kind, run_dir in outcomes if kind == "ok"] == [str(out / "x")]
        for kind, message in outcomes:
            if kind != "ok":
                assert message == (
                    f"Run folder {out / 'x'} already holds a run; pass resume=auto to continue it, "
                    f"or another name=... for a new run."
                )
        assert [p.name for p in out.iterdir()] == ["x"]
        assert [p.name for p in (out / "x").iterdir()] == ["config.yaml"]


def _claim_in_order(cfg, role, checking, done, results) -> None:
    """Launch "first" stops in ``prepare_run``'s free-space check until launch "second" has claimed its
    folder: the second's folder appears while the first is between looking and claiming. Both start
    in the same second (the time stamp of the folder name is fixed)."""
    time.strftime = lambda fmt, t=None: "20000101-000000"
    if role == "first":
        disk_usage = shutil.disk_usage

        def wait_then_disk_usage(path):
            checking.set()
            done.wait(60)
            return disk_usage(path)

        shutil.disk_usage = wait_then_disk_usage
    else:
        checking.wait(60)
    try:
        results.put((role, "ok", cli.prepare_run(cfg, "base")["run_dir"]))
    except Exception as exc:  # noqa: BLE001
        results.put((role, type(exc).__name__, str(exc)))
    finally:
        done.set()


@pytest.mark.parametrize("name", [None, "x"])
def test_a_folder_claimed_between_looking_and_claiming_is_never_shared(tmp_path, name):
    out = tmp_path / "runs"
    cfg = load_config(CONFIG, [*TINY, f"output_dir={out}", *([f"name={name}"] if name else [])])
    ctx = multiprocessing.get_context("fork")
    checking, done, results = ctx.Event(), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_claim_in_order, args=(cfg, role, checking, done, results)) for role in ("first", "second")
    ]
    for proc in procs:
        proc.start()
    outcomes = dict((role, (kind, text)) for role, kind, text in (results.get(timeout=120) for _ in procs))
    for proc in procs:
        proc.join(timeout=60)
    if name is None:  # both run, each in a folder of its own
        assert outcomes == {
            "second": ("ok", str(out / "base-20000101-000000")),
            "first": ("ok", str(out / "base-20000101-000000-2")),
        }
    else:
        assert outcomes == {
            "second": ("ok", str(out / "x")),
            "first": (
                "RunDirError",
                f"Run folder {out / 'x'} already holds a run; pass resume=auto "
                f"to continue it, or another name=... for a new run.",
            ),
        }
    for folder in out.iterdir():
        assert [p.name for p in folder.iterdir()] == ["config.yaml"]


def test_a_run_killed_before_its_first_checkpoint_starts_again_with_resume_auto(
    killed_early, reference, monkeypatch, caplog, capsys
):
    proc, args, run_dir = killed_early["proc"], killed_early["args"], killed_early["run_dir"]
    wait_for(killed_early["marker"], proc, killed_early["log"])
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not list((run_dir / "checkpoints").glob("*.pt")) and (run_dir / "config.yaml").exists()
    left = sorted(p.name for p in run_dir.iterdir())

    assert run_cli(args) == 2  # a run is there: refused, pointing to resume=auto
    assert f"Run folder {run_dir} already holds a run; pass resume=auto" in capsys.readouterr().err
    monkeypatch.setenv("PAUSE_AT", "1000000")  # never reached: the same command trains to the end
    monkeypatch.setenv("PAUSE_MARKER", str(killed_early["marker"]))
    # a crash while the run starts again leaves the killed run's folder alone (never removed on resume)
    monkeypatch.setenv("ATTACH_RAISES", "RuntimeError")
    with pytest.raises(RuntimeError, match="raised at attach"):
        run_cli([*args, "resume=auto"])
    assert set(left) <= {p.name for p in run_dir.iterdir()}

    monkeypatch.delenv("ATTACH_RAISES")
    with caplog.at_level(logging.INFO, logger="ignite_lstm"):
        assert run_cli([*args, "resume=auto"]) == 0
    assert (
        f"resume=auto: no checkpoint in {run_dir / 'checkpoints'} yet; starting the run from the beginning in {run_dir}"
    ) in caplog.text
    assert (run_dir / "metrics.json").exists() and (run_dir / "model.pt").exists()
    assert_same_history(history(run_dir), history(reference), tol=1e-6)  # from the beginning, as if left alone


def test_resume_auto_without_a_checkpoint_to_continue_starts_a_new_run(tmp_path, caplog):
    out = tmp_path / "runs"
    with caplog.at_level(logging.INFO, logger="ignite_lstm"):
        plan = cli.prepare_run(load_config(CONFIG, [*TINY, f"output_dir={out}", "name=x", "resume=auto"]), "base")
        assert plan["run_dir"] == str(out / "x") and plan["resume_from"] is None
        assert f"resume=auto: {out / 'x'} holds no run yet; starting a new run in {out / 'x'}" in caplog.text

        (out / "base-20000101-000000").mkdir()  # a run of this config without a checkpoint: never reused
        plan = cli.prepare_run(load_config(CONFIG, [*TINY, f"output_dir={out}", "resume=auto"]), "base")
    new = plan["run_dir"]
    assert new.startswith(str(out / "base-")) and new != str(out / "base-20000101-000000")
    assert plan["resume_from"] is None and sorted(p.name for p in (out / new).iterdir()) == ["config.yaml"]
    assert f"resume=auto: no run of this config in {out} has a checkpoint; starting a new run in {new}" in caplog.text


def test_resume_auto_on_a_finished_run_without_checkpoints_has_nothing_to_do(tmp_path, capsys):
    finished = tmp_path / "runs" / "done"
    finished.mkdir(parents=True)
    (finished / "model.pt").write_bytes(b"the final model of a run with handlers.checkpoint.enabled=false")
    overrides = [*TINY, f"output_dir={tmp_path / 'runs'}", "name=done", "resume=auto"]
    with pytest.raises(NothingToDo, match=f"resume=auto: run folder {finished} holds a finished run "):
        cli.prepare_run(load_config(CONFIG, overrides), "base")
    assert (
        run_cli(tiny_args(tmp_path / "data", tmp_path / "runs", "done", "resume=auto")) == 0
    )  # a preemption loop ends
    assert "and no training checkpoint to continue: nothing to do" in capsys.readouterr().out
    assert [p.name for p in finished.iterdir()] == ["model.pt"]


@pytest.mark.parametrize(
    "kind, torchrun", [("RuntimeError", False), ("KeyboardInterrupt", False), ("RuntimeError", True)]
)
def test_a_crash_during_start_up_leaves_nothing_that_blocks_the_same_command(tmp_path, monkeypatch, kind, torchrun):
    if torchrun:  # one process as torchrun starts it: rank 0 claims the folder in the worker
        monkeypatch.setenv("RANK", "0")
        monkeypatch.setenv("WORLD_SIZE", "1")
    out = tmp_path / "out" / "runs"  # neither exists: both are created, and both removed again
    args = tiny_args(tmp_path / "data", out, "x", "handlers.extra=[handler_helpers:raise_at_attach]", "train.epochs=2")
    monkeypatch.setenv("ATTACH_RAISES", kind)
    if kind == "KeyboardInterrupt":
        assert run_cli(args) == 130
    else:
        with pytest.raises(RuntimeError, match="raised at attach"):
            run_cli(args)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # the generated data is kept for the next run

    monkeypatch.delenv("ATTACH_RAISES")
    assert run_cli(args) == 0
    assert (out / "x" / "model.pt").exists()


def test_a_refused_run_leaves_no_folder_it_created_and_every_folder_it_did_not(tmp_path, capsys):
    cfg = load_config(CONFIG, [*TINY, f"data.dir={tmp_path / 'data'}"])
    name = split_filename("train", split_params(cfg.data, "train"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / name).write_bytes(b"this is not an HDF5 file\n")  # refused once the run folder is made

    out = tmp_path / "out" / "runs"
    assert run_cli(tiny_args(tmp_path / "data", out, "x")) == 2
    assert f"error: Data file {tmp_path / 'data' / name} " in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no empty output_dir (nor its parent)

    (out / "earlier").mkdir(parents=True)  # an output_dir that exists stays, with what it holds
    assert run_cli(tiny_args(tmp_path / "data", out, "x")) == 2
    assert [p.name for p in out.iterdir()] == ["earlier"]
