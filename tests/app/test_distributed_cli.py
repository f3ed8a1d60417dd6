"""``run.py`` on 2 gloo CPU processes: the run as a user starts it.

- it finishes, rank 0 alone writes, and its metrics equal a one-process evaluation of its model.pt;
- settings that do not fit the number of processes are refused before anything is written;
- Ctrl-C stops both processes with exit 130, ``resume=auto`` continues to the numbers of a run left
  alone, and the report is written;
- a NaN on one process stops both with exit 3.

Kept apart from ``test_distributed.py`` so that the two files run side by side on the suite's workers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import ignite.distributed as idist
import pytest
import torch
from conftest import QUICK_YAML
from handler_helpers import run_cli as run_main
from ignite.engine import Events
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from ignite_lstm.app.config.schema import load_config
from ignite_lstm.app.run.evaluate import evaluate_splits
from ignite_lstm.app.run.setup import setup_evaluators
from ignite_lstm.app.task.dataset import setup_data
from ignite_lstm.models.lstm import load_model

REPO = Path(__file__).resolve().parents[2]
# the helpers' folder and this one: run.py's processes import handlers.extra entries from here
TESTS = os.pathsep.join([str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)])


# conftest's tiny preset, for 2 gloo processes: 2 training mixtures (a batch per rank), an
# evaluation batch of 1 (the one-process evaluation below then sees the same batches).
QUICK = OmegaConf.to_yaml(
    OmegaConf.merge(
        OmegaConf.create(QUICK_YAML),
        {
            "data": {"train": {"mixtures": 2}},
            "eval": {"batch_size": 1},
            "threads": 1,
            "distributed": {"backend": "gloo", "nproc_per_node": 2},
        },
    )
)


def _run_py(args, cwd: Path, env: dict | None = None, **popen) -> subprocess.Popen:
    full_env = {k: v for k, v in os.environ.items() if k != "MASTER_PORT"}
    full_env.update({"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]), **(env or {})})
    return subprocess.Popen(
        [sys.executable, str(REPO / "run.py"), *map(str, args)],
        cwd=cwd,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


@contextmanager
def _port_taken(port: int):
    """Hold ``port`` (ignite's default rendezvous port) so that a run relying on it would fail."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:  # someone else holds it: just as good
            pass
        yield


@pytest.mark.parametrize(
    "overrides, env, message",
    [
        (
            ["train.batch_size=5"],
            {},
            "train.batch_size: 5 is not divisible by the 2 processes (each trains on an equal "
            "share of the global batch); use a multiple of 2",
        ),
        (
            ["distributed.backend=null", "distributed.nproc_per_node=1"],
            {"RANK": "0", "WORLD_SIZE": "2"},
            "distributed.backend: null cannot join torchrun's 2 processes (each would train alone); set gloo (CPU) or "
            "nccl (GPU)",
        ),
    ],
)
def test_settings_that_do_not_fit_the_number_of_processes_are_refused_before_anything_is_written(
    overrides, env, message, tmp_path, monkeypatch, capsys
):
    (tmp_path / "quick.yaml").write_text(QUICK)
    monkeypatch.chdir(tmp_path)
    for key, value in env.items():  # as torchrun sets them
        monkeypatch.setenv(key, value)
    assert run_main(["quick.yaml", *overrides]) == 2
    assert f"  - {message}" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["quick.yaml"]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """``python run.py quick.yaml name=two`` on 2 gloo processes: (folder, stdout, stderr, seconds)."""
    cwd = tmp_path_factory.mktemp("distributed-cli")
    (cwd / "quick.yaml").write_text(QUICK)
    start = time.monotonic()
    with _port_taken(2222):
        proc = _run_py(["quick.yaml", "name=two"], cwd)
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return cwd, out, err, time.monotonic() - start


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_run_py_on_two_processes_writes_each_file_once_from_rank_0(two_process_run):
    cwd, out, err, _ = two_process_run
    run_dir = cwd / "runs" / "two"
    files = _listing(run_dir)
    assert [f for f in files if not f.startswith(("tb/", "checkpoints/"))] == [
        "config.yaml",
        "history.json",
        "metrics.json",
        "model.pt",
        "train.log",
    ]
    assert len([f for f in files if f.startswith("tb/")]) == 1
    assert [f for f in files if f.startswith("checkpoints/last_")] == ["checkpoints/last_checkpoint_4.pt"]
    assert len([f for f in files if f.startswith("checkpoints/best_")]) == 1
    assert sorted(p.suffix for p in (cwd / "data").iterdir()) == [".h5"] * 3
    assert [e["epoch"] for e in json.loads((run_dir / "history.json").read_text())["epochs"]] == [1, 2]
    log = (run_dir / "train.log").read_text()
    assert log.count("Epoch 1/2 ") == 1 and log.count("Epoch 2/2 ") == 1
    assert err.count("Epoch 2/2 ") == 1  # rank 1 logs warnings only
    assert out.startswith(f"Run folder: {Path('runs') / 'two'}\nEpochs: 2")


def test_run_py_on_two_processes_reports_the_metrics_of_a_one_process_evaluation(two_process_run, monkeypatch):
    cwd, _, _, _ = two_process_run
    run_dir = cwd / "runs" / "two"
    monkeypatch.chdir(cwd)  # the stored data.dir is relative
    cfg = load_config(run_dir / "config.yaml")
    model, _ = load_model(run_dir / "model.pt")
    data = setup_data(cfg)  # here a single process: whole splits
    reported = json.loads((run_dir / "metrics.json").read_text())
    expected = {}
    evaluator = setup_evaluators(cfg, model, torch.device("cpu"))["final"]  # the run's final evaluator
    for split, dataset in data["datasets"].items():
        expected.update(evaluate_splits(evaluator, {split: DataLoader(dataset, batch_size=1)}))
    assert set(reported) == set(expected)
    assert reported == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_ctrl_c_stops_both_processes_and_resume_continues_to_the_same_run(two_process_run):
    cwd, _, _, _ = two_process_run
    marker = cwd / "paused"
    args = ["quick.yaml", "name=stopped", "handlers.extra=[handler_helpers:pause]"]
    env = {"PAUSE_AT": "1", "PAUSE_MARKER": str(marker)}
    proc = _run_py(args, cwd, env, start_new_session=True)
    deadline = time.monotonic() + 240
    while not marker.exists():  # both ranks wait at the end of iteration 1 (mid-epoch 1) for Ctrl-C
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal sends: the launcher and both ranks
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    checkpoint = Path("runs") / "stopped" / "checkpoints" / "interrupted_checkpoint_1.pt"
    assert "Training interrupted by Ctrl-C at epoch 1, iteration 1; checkpoint saved to " in err
    assert f"resume={checkpoint}" in err
    assert "Traceback" not in err

    resumed = _run_py([*args, "resume=auto", "eval.report=true"], cwd, env)  # iteration 1 is behind it: no pause
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "Resumed from" in err and "(1 of 2 batches of epoch 1 done)" in err
    run_dir, reference = cwd / "runs" / "stopped", cwd / "runs" / "two"
    history = [json.loads((d / "history.json").read_text())["epochs"] for d in (run_dir, reference)]
    for got, want in zip(*history):
        want = {k: v for k, v in want.items() if not k.startswith("time/")}
        assert {k: got[k] for k in want} == pytest.approx(want, rel=1e-6)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics == pytest.approx(json.loads((reference / "metrics.json").read_text()), rel=1e-6)
    # the report: model.pt evaluated by one process after the run, the same numbers
    report = json.loads((run_dir / "report" / "metrics.json").read_text())
    assert {k: report[k] for k in metrics} == pytest.approx(metrics, rel=1e-6, abs=1e-6)
    assert (run_dir / "report" / "spectra.png").is_file()


def nan_on_rank_0(trainer, evaluator, config) -> None:
    """``handlers.extra`` entry: NaN inputs on rank 0 alone in iteration ``$NAN_AT``."""

    @trainer.on(Events.ITERATION_STARTED(once=int(os.environ["NAN_AT"])))
    def _poison(engine):
        if idist.get_rank() == 0:
            x, y = engine.state.batch[0], engine.state.batch[1]
            engine.state.batch = [torch.full_like(x, float("nan")), y]


def test_a_nan_loss_on_one_process_stops_both_with_exit_3(two_process_run):
    cwd, _, _, _ = two_process_run
    # update=sequence: rank 1's own loss of that iteration is finite (its weights change only after it)
    args = ["quick.yaml", "name=nan", "train.update=sequence", "handlers.extra=[test_distributed_cli:nan_on_rank_0]"]
    proc = _run_py(args, cwd, {"NAN_AT": "3"})
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 3, err
    assert "error: Loss became nan at epoch 2, iteration 3; training stopped. The last good checkpoint is " in err
    assert "Traceback" not in err
    assert sorted(p.name for p in (cwd / "runs" / "nan" / "checkpoints").glob("last_*")) == ["last_checkpoint_2.pt"]
