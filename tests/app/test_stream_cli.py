"""Stream mode from the command line (``data.layout: streams``): the loaders, the evaluation, the training,
exact resume after SIGKILL and Ctrl-C in the middle of an epoch, on 1 and 2 processes, and the config rules.

The run here is the tiny config of ``handler_helpers`` laid out as streams: its 8 training sequences of
200 steps in 4 lanes (2 per lane, shuffled per epoch), chunks of 60 steps (``data.stream.chunk_steps``
null: ``train.tbptt_steps``), so that each sequence takes 4 chunks, the last one 20 counted steps and
40 masked: 8 iterations per epoch. Evaluation: 2 lanes per process, so that a lane plays 2 sequences on
one process (a reset in the middle of the lane). The subprocess runs start together with the module
(see ``_background``) and wait at one exact iteration; nothing depends on timing.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import ignite.distributed as idist
import pytest
import torch
from handler_helpers import (
    TWO_PROCESSES,
    Background,
    assert_same_history,
    history,
    run_cli,
    run_in_process,
    spawn_session,
    tiny_args,
)
from torch.utils.data import DataLoader, default_collate

from ignite_lstm.app.config.schema import ConfigError, load_config, validate_config
from ignite_lstm.app.run import evaluate, training
from ignite_lstm.app.run.evaluate import evaluate_splits
from ignite_lstm.app.run.setup import setup_evaluators
from ignite_lstm.app.task.dataset import setup_data
from ignite_lstm.checkpoint.files import find_checkpoint
from ignite_lstm.data.streams import StreamLoader
from ignite_lstm.models.lstm import load_model

STREAM = [
    "data.layout=streams",
    "train.carry_state=true",
    "train.tbptt_steps=60",
    "eval.batch_size=2",
    "eval.report=false",
]
EPOCH = 8  # iterations per epoch: 2 sequences per lane x 4 chunks each
KILL_AT = 2 * EPOCH + 3  # SIGKILL in the middle of epoch 3
INTERRUPT_AT = EPOCH + 3  # Ctrl-C in the middle of epoch 2


def _args(root: Path, name: str, *extra: str) -> list[str]:
    return tiny_args(root / f"data-{name}", root / "runs", name, *STREAM, *extra)


def _config(root: Path, *extra: str):
    args = tiny_args(root / "data", root / "runs", "x", *STREAM, *extra)
    return load_config(args[0], args[1:])


@pytest.fixture(scope="module", autouse=True)
def _background(tmp_path_factory) -> dict[str, Background]:
    """The ``run.py`` subprocesses, started with the module so that their start-up overlaps the in-process
    tests: "killed" (1 process) and "two_killed" (2 gloo processes) wait at the end of iteration ``KILL_AT``
    to be killed."""
    root = tmp_path_factory.mktemp("stream-background")
    runs = {}
    for name, extra in (("killed", []), ("two_killed", TWO_PROCESSES)):
        marker, log = root / f"{name}.paused", root / f"{name}.log"
        args = _args(root, name, *extra, "handlers.extra=[handler_helpers:pause]")
        env = {"PAUSE_AT": str(KILL_AT), "PAUSE_MARKER": str(marker)}
        runs[name] = Background(spawn_session(args, env, log), root / f"data-{name}", root / "runs", name, marker, log)
    return runs


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The run folder of the stream config trained without interruption, in this process."""
    root = tmp_path_factory.mktemp("stream-reference")
    assert run_cli(_args(root, "reference")) == 0
    return root / "runs" / "reference"


def _metrics(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "metrics.json").read_text())


# --- the config ---------------------------------------------------------------------------------------


def _problems(values: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate_config(values)
    return info.value.problems


def test_the_streams_layout_needs_carry_state_and_names_what_it_accepts():
    assert _problems({"data": {"layout": "streams"}}) == [
        "data.layout: 'streams' needs train.carry_state: true (lane i of a chunk continues the series that lane i "
        "of the previous chunk played), got False"
    ]
    assert _problems({"data": {"layout": "stream"}}) == [
        "data.layout: 'stream' is not allowed: choose one of 'sequences', 'streams'"
    ]
    assert _problems({"data": {"stream": {"chunk_steps": 0, "shuffle": "yes"}}}) == [
        "data.stream.chunk_steps: 0 is out of range: must be >= 1",
        "data.stream.shuffle: 'yes' has the wrong type: expected bool",
    ]
    curriculum = _problems(
        {"data": {"layout": "streams"}, "train": {"carry_state": True, "curriculum": {"enabled": True, "start": 50}}}
    )
    assert [p for p in curriculum if p.startswith("train.carry_state")] == [
        "train.carry_state: true cannot run with train.curriculum.enabled: true (the curriculum cuts every batch to "
        "its first L steps, so lane i of the next batch would not continue where lane i was cut)"
    ]


def test_full_batches_are_needed_by_the_sequences_layout_only():
    # 5 mixtures x 4 frequencies = 20 training sequences: batches of 8 would leave a last one of 4 lanes
    values = {"train": {"carry_state": True, "batch_size": 8}, "data": {"train": {"mixtures": 5}}}
    assert _problems(values)[0].startswith("train.carry_state: true needs every training batch full")
    cfg = validate_config({**values, "data": {"train": {"mixtures": 5}, "layout": "streams"}})
    assert cfg.data.layout == "streams" and cfg.data.stream.chunk_steps is None and cfg.data.stream.shuffle


def test_run_py_refuses_streams_without_carry_state_before_anything_is_written(tmp_path, capsys):
    args = tiny_args(tmp_path / "data", tmp_path / "runs", "x", "data.layout=streams")
    assert run_cli(args) == 2
    assert "  - data.layout: 'streams' needs train.carry_state: true" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# --- the loaders ----------------------------------------------------------------------------------------


def test_setup_data_lays_every_split_out_in_lanes_of_chunks(tmp_path):
    data = setup_data(_config(tmp_path))
    train = data["train_loader"]
    assert isinstance(train, StreamLoader)
    assert (train.lanes, train.chunk_steps, train.shuffle, train.seed) == (4, 60, True, 0)  # chunk_steps null: 60
    assert len(train) == EPOCH and train.layout(0) != train.layout(1)  # a new order every epoch
    assert sorted(i for lane in train.layout(0) for i in lane) == list(range(8))  # every sequence once
    for split, loader in data["eval_loaders"].items():  # eval.batch_size lanes, in order
        assert isinstance(loader, StreamLoader) and not loader.shuffle
        n = len(data["datasets"][split])  # 8 training sequences, 4 of validation and test
        assert (loader.lanes, len(loader), loader.layout()) == (
            2,
            n // 2 * 4,
            [list(range(n))[::2], list(range(n))[1::2]],
        ), split
        assert torch.equal(loader.series[2].read(0, 200)[0], data["datasets"][split][2][0])  # its sequence 2
    # a split with fewer sequences than eval.batch_size gets a lane per sequence, none left empty
    wide = setup_data(
        _config(tmp_path, "eval.batch_size=40", "data.stream.chunk_steps=100", "data.stream.shuffle=false", "seed=5")
    )
    assert {split: loader.lanes for split, loader in wide["eval_loaders"].items()} == {"train": 8, "val": 4, "test": 4}
    train = wide["train_loader"]
    assert (train.chunk_steps, train.shuffle, train.seed, len(train)) == (100, False, 5, 2 * 2)


# --- evaluation and training ------------------------------------------------------------------------------


def test_a_stream_run_reports_the_metrics_of_its_model_evaluated_on_whole_sequences(reference, tmp_path):
    """metrics.json (the stream evaluator, chunk by chunk, 2 sequences per lane) equals model.pt evaluated
    sequence by sequence, and so does ``ignite-lstm evaluate`` of the run (whole sequences)."""
    reported = _metrics(reference)
    cfg = load_config(reference / "config.yaml")
    model, _ = load_model(reference / "model.pt")
    data = setup_data(cfg)
    evaluator = setup_evaluators(cfg, model, torch.device("cpu"), carry_state=False)["final"]
    expected = evaluate_splits(evaluator, {s: DataLoader(d, batch_size=8) for s, d in data["datasets"].items()})
    assert set(reported) == set(expected) and len(reported) == 3 * 31
    # float32: chunks of 60 steps against whole calls (measured: 1.7e-7 relative at most)
    assert reported == pytest.approx(expected, rel=1e-6, abs=1e-7)
    out = tmp_path / "report"
    assert run_in_process(evaluate.main, [reference, "--no-figures", "--output", out]) == 0
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(reported, rel=1e-6, abs=1e-7)


def test_eval_warm_up_steps_count_only_the_later_steps_of_every_stream_sequence(reference):
    """``eval.warm_up_steps``: the stream evaluators (2 sequences per lane, chunks of 60) score every sequence
    from step 150 on, from the state its first 150 steps leave: as the model run over each sequence by hand."""
    cfg = load_config(reference / "config.yaml", ["eval.warm_up_steps=150"])
    model, _ = load_model(reference / "model.pt")
    data = setup_data(cfg)
    evaluator = setup_evaluators(cfg, model, torch.device("cpu"))["val"]
    got = evaluator.run(data["eval_loaders"]["val"]).metrics["mse"]
    errors = []
    with torch.no_grad():
        for x, y in (data["datasets"]["val"][i] for i in range(len(data["datasets"]["val"]))):
            y_hat, _ = model(x[None])
            errors.append((y_hat[0, 150:] - y[150:]) ** 2)
    assert got == pytest.approx(torch.cat(errors).mean().item(), rel=1e-5)
    assert got != pytest.approx(_metrics(reference)["val/mse"], rel=1e-3)  # guard: the warm-up matters
    assert "eval.warm_up_steps: 200 must be shorter than a sequence (200 steps" in str(
        pytest.raises(ConfigError, load_config, reference / "config.yaml", ["eval.warm_up_steps=200"]).value
    )


class _InStreamOrder:
    """Whole-sequence batches of the sequences a ``StreamLoader`` plays, epoch by epoch: batch j holds the
    j-th sequence of every lane, in lane order (the sequences layout, unshuffled, in the stream's order)."""

    def __init__(self, dataset, stream: StreamLoader) -> None:
        self.dataset, self.stream, self.epoch = dataset, stream, 0

    def __len__(self) -> int:
        return len(self.stream.layout(0)[0])

    def __iter__(self):
        lanes = self.stream.layout(self.epoch)
        self.epoch += 1
        for j in range(len(lanes[0])):
            yield default_collate([self.dataset[lane[j]] for lane in lanes])  # x (4, 200, 5), y (4, 200, 1)


def test_stream_training_equals_whole_sequences_in_the_lanes_order(tmp_path):
    """Chunks of tbptt_steps steps with the state carried, update=window, train to the parameters (to float32
    rounding) of the same sequences in whole-sequence batches with the same windows: the lanes of chunks 4j..4j+3 hold
    batch j (the last chunk of each sequence 20 counted steps and 40 masked, the last window of the whole
    sequences 20 steps), and the learning-rate schedule counts the same optimizer steps.

    The two layouts order the sequences differently (the sequences layout shuffles by DistributedSampler,
    the stream by its own generator), so the whole sequences are fed here in the stream's order. Dropout
    is off: the whole-sequence DataLoader and the shorter last window would draw other random numbers."""
    stream_cfg = _config(tmp_path, "model.dropout=0.0", "train.epochs=2")
    sequences_cfg = _config(
        tmp_path, "model.dropout=0.0", "train.epochs=2", "data.layout=sequences", "train.carry_state=false"
    )
    runs = {}
    for name, cfg in (("streams", stream_cfg), ("sequences", sequences_cfg)):
        (tmp_path / name).mkdir()
        s = training.setup(cfg, tmp_path / name)
        try:
            data = (
                s.train_data
                if name == "streams"
                else _InStreamOrder(s.data["datasets"]["train"], runs["streams"].data["train_loader"])
            )
            s.trainer.run(data, max_epochs=cfg.train.epochs)
        finally:
            s.handlers.interrupt.close()
        runs[name] = s
    streams, sequences = runs["streams"], runs["sequences"]
    assert streams.trainer.state.iteration == 2 * EPOCH and sequences.trainer.state.iteration == 2 * 2
    # The same arithmetic in other matrix shapes (chunks of 4 lanes against whole batches): no BLAS promises
    # the same last bits for both, so float32 within a few units of rounding over the run's 16 Adam steps.
    # A state reset at every chunk instead of carried moves them by 1e-4 to 3e-3 (measured once by breaking it).
    for key, value in sequences.net.state_dict().items():
        torch.testing.assert_close(streams.net.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)
    got, want = streams.handlers.history.state_dict()["epochs"], sequences.handlers.history.state_dict()["epochs"]
    # train/loss is the mean of the iterations' losses, each the mean over its counted steps: here of 8 chunks
    # (60, 60, 60 and 20 counted steps per sequence), there of 2 batches of whole sequences; the rest is equal
    drop = lambda epochs: [
        {k: v for k, v in e.items() if not k.startswith(("time/", "train/loss"))}  # noqa: E731
        for e in epochs
    ]
    assert_same_history(drop(got), drop(want), tol=1e-6)  # the learning rate, every validation metric (float32)
    assert got[0]["train/loss"] != want[0]["train/loss"]


# --- exact resume -----------------------------------------------------------------------------------------


def test_ctrl_c_in_the_middle_of_an_epoch_saves_the_loader_position_and_the_lanes_and_resumes_exactly(
    reference, tmp_path, monkeypatch
):
    monkeypatch.setenv("CTRL_C_AT", str(INTERRUPT_AT))  # a real SIGINT to this process at that iteration's end
    args = _args(tmp_path, "ctrl_c", "handlers.extra=[handler_helpers:ctrl_c]")
    assert run_cli(args) == 130
    run_dir = tmp_path / "runs" / "ctrl_c"
    saved = torch.load(run_dir / "checkpoints" / f"interrupted_checkpoint_{INTERRUPT_AT}.pt", weights_only=True)
    assert saved["trainer"]["iteration"] == INTERRUPT_AT
    assert saved["train_loader"] == {
        "epoch": 1,
        "position": 3,
        "lanes": 4,
        "chunk_steps": 60,
        "series": 8,
        "steps": 1600,
        "shuffle": 1,
        "seed": 0,
    }  # the next chunk: epoch 2's 4th
    carried = saved["trainer"]["carried_state"]
    assert [tuple(t.shape) for t in carried["state"]] == [(2, 4, 8)] * 2  # (h, c): 2 layers, 4 lanes, 8 units
    assert carried["lanes"].tolist() == [4] and carried["stale"].tolist() == [False]
    assert all(t.abs().sum() > 0 for t in carried["state"])  # lanes in the middle of their sequences

    assert run_cli([*args, "resume=auto"]) == 0  # the iteration of CTRL_C_AT is behind it
    assert_same_history(history(run_dir), history(reference), tol=0.0)
    assert _metrics(run_dir) == _metrics(reference)


def test_a_run_killed_in_the_middle_of_an_epoch_resumes_exactly(_background, reference):
    killed = _background["killed"]
    killed.wait_until_paused()
    os.killpg(killed.proc.pid, signal.SIGKILL)
    assert killed.proc.wait(timeout=60) == -signal.SIGKILL
    files = sorted(p.name for p in (killed.run_dir / "checkpoints").iterdir())
    assert [f for f in files if not f.startswith("best_")] == [f"last_checkpoint_{2 * EPOCH}.pt"]
    assert [e["epoch"] for e in history(killed.run_dir)] == [1, 2]

    args = _args(killed.output_dir.parent, killed.name, "resume=auto")
    assert run_cli(args) == 0  # without the pause: iteration KILL_AT is ahead
    assert_same_history(history(killed.run_dir), history(reference), tol=0.0)
    assert _metrics(killed.run_dir) == _metrics(reference)


def _train_on_two(local_rank: int, cfg, run_dir: str, resume_from: str | None, status: str) -> None:
    outcome = training.run(local_rank, cfg, run_dir, resume_from)  # what each rank of run.py runs
    assert outcome.status == status, outcome


def _two_processes(cfg, run_dir: Path, resume_from: Path | None = None, status: str = "done") -> None:
    """``training.run`` on 2 gloo processes forked from this one (no second import of torch)."""
    run_dir.mkdir(exist_ok=True)
    idist.spawn(
        "gloo",
        _train_on_two,
        (cfg, str(run_dir), resume_from and str(resume_from), status),
        nproc_per_node=2,
        master_port=_free_port(),
        start_method="fork",
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_reference(tmp_path_factory) -> Path:
    """The run folder of the stream config trained on 2 processes without interruption (2 lanes each)."""
    root = tmp_path_factory.mktemp("stream-two-reference")
    _two_processes(_config(root, *TWO_PROCESSES), root / "run")
    return root / "run"


def test_two_processes_killed_in_the_middle_of_an_epoch_resume_exactly(_background, two_reference):
    """``run.py`` on 2 gloo processes, killed together (the launcher and both ranks), continued from the
    newest checkpoint (what ``resume=auto`` takes): the history and metrics of the 2-process run left alone."""
    run = _background["two_killed"]
    run.wait_until_paused()
    os.killpg(run.proc.pid, signal.SIGKILL)
    assert run.proc.wait(timeout=60) == -signal.SIGKILL
    assert [e["epoch"] for e in history(run.run_dir)] == [1, 2]
    latest = find_checkpoint(run.run_dir / "checkpoints")
    assert latest.name == f"last_checkpoint_{2 * EPOCH}.pt"

    _two_processes(load_config(run.run_dir / "config.yaml", ["handlers.extra=[]"]), run.run_dir, latest)
    assert_same_history(history(run.run_dir), history(two_reference), tol=0.0)
    assert _metrics(run.run_dir) == _metrics(two_reference)


def test_two_processes_stopped_by_ctrl_c_in_the_middle_of_an_epoch_resume_exactly(two_reference, tmp_path, monkeypatch):
    """Both ranks get a real SIGINT at the end of the same iteration; the interrupted checkpoint holds every
    rank's lanes and the loader position, and the run continued from it is the run left alone."""
    monkeypatch.setenv("CTRL_C_AT", str(INTERRUPT_AT))
    cfg = _config(tmp_path, *TWO_PROCESSES, "handlers.extra=[handler_helpers:ctrl_c]")
    run_dir = tmp_path / "run"
    _two_processes(cfg, run_dir, status="interrupted")
    saved = run_dir / "checkpoints" / f"interrupted_checkpoint_{INTERRUPT_AT}.pt"
    checkpoint = torch.load(saved, weights_only=True)
    assert (checkpoint["train_loader"]["epoch"], checkpoint["train_loader"]["position"]) == (1, 3)
    carried = checkpoint["trainer"]["carried_state"]  # every rank's lanes, in rank order
    assert carried["lanes"].tolist() == [2, 2] and [tuple(t.shape) for t in carried["state"]] == [(2, 4, 8)] * 2

    _two_processes(cfg, run_dir, saved)  # the iteration of CTRL_C_AT is behind it
    assert_same_history(history(run_dir), history(two_reference), tol=0.0)
    assert _metrics(run_dir) == _metrics(two_reference)
