"""Data-parallel runs on 2 gloo CPU processes compute what one process computes.

- evaluation counts every sequence once, also with an odd number of sequences and with
  a rank that holds none;
- with the same global batch and seed, the parameters after a few optimizer steps equal
  those of one process, on the fused window, fused-detached and stepwise paths;
- the reported training loss is the mean over the processes (the global batch's);
- masked batches of sequences of different lengths (each process padding to its own
  longest) give the loss and parameters of one process on the whole batch;
- ``run.py`` with ``distributed.nproc_per_node=2`` finishes, rank 0 alone writes, and its
  metrics equal a one-process evaluation of its model.pt; settings that do not fit the
  number of processes are refused before anything is written;
- (slow) Ctrl-C stops both processes with exit 130, ``resume=auto`` continues to the numbers
  of a run left alone, and the report is written; a NaN on one process stops both with exit 3.

Processes are started once per test (``idist.spawn`` with fork, or ``run.py`` as a
subprocess), since each start costs seconds on a small machine.
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
from ignite.utils import manual_seed
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from ignite_lstm.app.config.schema import load_config
from ignite_lstm.app.run.evaluate import evaluate_splits
from ignite_lstm.app.run.setup import setup_evaluators
from ignite_lstm.app.run.training import setup
from ignite_lstm.app.task.dataset import setup_data
from ignite_lstm.app.task.model import setup_model
from ignite_lstm.engine.batches import collate_sequences
from ignite_lstm.engine.factories import create_trainer
from ignite_lstm.models.lstm import StatefulLSTM, load_model

REPO = Path(__file__).resolve().parents[2]
TESTS = Path(__file__).resolve().parents[1]  # the helpers' folder
BASE = str(REPO / "configs" / "base.yaml")
WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(fn, *args) -> None:
    """Run ``fn(local_rank, *args)`` on 2 gloo processes (forked: no second import of torch)."""
    idist.spawn("gloo", fn, args, nproc_per_node=WORLD, master_port=_free_port(), start_method="fork")


def _load(overrides: list[str]):
    return load_config(BASE, overrides)


# --- evaluation: every sequence exactly once -------------------------------------------------------


# 3 mixtures x 3 frequencies = 9 validation sequences (5 on rank 0, 4 on rank 1); 3 test sequences
# (2 and 1); with one frequency, every split has one sequence and rank 1 none. Batches of one
# sequence: float32 matrix products round differently for other batch sizes, which would show
# in the correlation (a small difference of large sums), not in what is counted.
EVAL_CASES = {
    "odd": [
        "data.duration=0.05",
        "data.frequencies=[1.0,3.0,5.0]",
        "data.val.mixtures=3",
        "eval.batch_size=1",
        "model.hidden_size=8",
    ],
    "empty_rank": ["data.duration=0.05", "data.frequencies=[1.0]", "eval.batch_size=1", "model.hidden_size=8"],
}


def _evaluate_splits(local_rank: int, data_dir: str, out: str) -> None:
    results = {}
    for case, overrides in EVAL_CASES.items():
        cfg = _load([*overrides, f"data.dir={data_dir}"])
        data = setup_data(cfg)
        manual_seed(cfg.seed)
        model = setup_model(cfg)  # the same weights on every rank and in the single process
        flat = evaluate_splits(setup_evaluators(cfg, model, torch.device("cpu"))["final"], data["eval_loaders"])
        metrics = {
            split: {k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith(f"{split}/")}
            for split in data["eval_loaders"]
        }
        sizes = {split: sum(len(batch[0]) for batch in loader) for split, loader in data["eval_loaders"].items()}
        results[case] = {"metrics": metrics, "sizes": sizes}
    torch.save(results, Path(out) / f"eval-{idist.get_rank()}-of-{idist.get_world_size()}.pt")


def test_evaluation_on_two_processes_counts_every_sequence_once(tmp_path):
    _evaluate_splits(0, str(tmp_path / "data"), str(tmp_path))  # one process; also generates the data
    _spawn(_evaluate_splits, str(tmp_path / "data"), str(tmp_path))
    single = torch.load(tmp_path / "eval-0-of-1.pt")
    ranks = [torch.load(tmp_path / f"eval-{r}-of-2.pt") for r in range(WORLD)]
    assert ranks[0]["odd"]["sizes"]["val"] == 5 and ranks[1]["odd"]["sizes"]["val"] == 4
    assert ranks[1]["empty_rank"]["sizes"]["test"] == 0
    for case in EVAL_CASES:
        expected = single[case]["metrics"]
        assert set(expected["val"]) >= {"mse", "snr", "corr", "r2", "mse_f1"}
        for rank in ranks:  # every rank reports the reduced values
            for split, values in expected.items():
                assert rank[case]["metrics"][split] == pytest.approx(values, rel=1e-6, abs=1e-6), (case, split)


# --- training: the same parameters as one process ----------------------------------------------------

# 8 training sequences, global batch 4 (2 per process), 2 epochs: 2 iterations per epoch. A constant
# learning rate (full steps: the parameters move clearly); no files but history.json.
TRAIN_COMMON = [
    "data.train.mixtures=2",
    "train.batch_size=4",
    "model.hidden_size=8",
    "train.grad_clip=1.0",
    "handlers.lr_scheduler.name=none",
    "handlers.checkpoint.enabled=false",
    "handlers.tensorboard.enabled=false",
    "handlers.progress_bar=false",
]
TRAIN_CASES = {
    # 4 windows of 50 steps, an optimizer step per window: 16 steps
    "fused": ["data.duration=0.2", "train.tbptt_steps=50", "train.update=window"],
    # tbptt_steps=1, one step per batch, chunks of 64 of 200 steps (gradients kept local until the last)
    "fused-detached": ["data.duration=0.2", "train.tbptt_steps=1", "train.update=sequence", "train.chunk_steps=64"],
    # one DDP forward per time step, 4 windows of 5 steps summed into one step per batch
    "stepwise": ["data.duration=0.02", "train.tbptt_steps=5", "train.update=sequence", "train.engine=stepwise"],
}


def _train(local_rank: int, data_dir: str, out: str) -> None:
    results = {}
    for case, overrides in TRAIN_CASES.items():
        cfg = _load([*TRAIN_COMMON, *overrides, f"data.dir={data_dir}"])
        run_dir = Path(out) / f"run-{case}-of-{idist.get_world_size()}"
        run_dir.mkdir(exist_ok=True)
        s = setup(cfg, run_dir)  # the run's own wiring: seed, data, model, optimizer, trainer and handlers
        sampler = s.data["train_loader"].sampler
        orders, losses = [], []
        # after the run's own EPOCH_STARTED handler, which draws a new permutation per epoch
        s.trainer.add_event_handler(Events.EPOCH_STARTED, lambda _: orders.append(list(sampler)))  # noqa: B023
        s.trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"]))  # noqa: B023
        try:
            s.trainer.run(s.train_data, max_epochs=2)
        finally:
            s.handlers.interrupt.close()
        results[case] = {
            "params": {k: v.clone() for k, v in s.net.state_dict().items()},
            "losses": losses,
            "orders": orders,
            "execution": s.trainer.state.execution,
            "local_batch": s.data["train_loader"].batch_size,
        }
    torch.save(results, Path(out) / f"train-{idist.get_rank()}-of-{idist.get_world_size()}.pt")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Both runs of every ``TRAIN_CASES`` entry: (one process, [rank 0, rank 1])."""
    root = tmp_path_factory.mktemp("distributed-train")
    _train(0, str(root / "data"), str(root))
    _spawn(_train, str(root / "data"), str(root))
    return torch.load(root / "train-0-of-1.pt"), [torch.load(root / f"train-{r}-of-2.pt") for r in range(WORLD)]


def test_each_step_of_two_processes_sees_the_sequences_of_the_one_process_batch(trained):
    single, ranks = trained
    for case in TRAIN_CASES:
        assert single[case]["local_batch"] == 4 and ranks[0][case]["local_batch"] == 2
        for epoch, order in enumerate(single[case]["orders"]):
            batches = [order[i : i + 4] for i in range(0, len(order), 4)]
            shards = [r[case]["orders"][epoch] for r in ranks]
            for b, batch in enumerate(batches):
                union = [i for shard in shards for i in shard[2 * b : 2 * b + 2]]
                assert sorted(union) == sorted(batch), (case, epoch, b)
        assert single[case]["orders"][0] != single[case]["orders"][1]  # reshuffled per epoch


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_parameters_after_training_on_two_processes_equal_one_process(trained, case):
    single, ranks = trained
    assert single[case]["execution"] == ranks[0][case]["execution"] == case
    for name, value in single[case]["params"].items():
        assert torch.equal(ranks[0][case]["params"][name], ranks[1][case]["params"][name]), name
        assert torch.allclose(ranks[0][case]["params"][name], value, rtol=0, atol=1e-5), (case, name)
    assert not torch.allclose(
        single[case]["params"]["layers.0.weight_hh_l0"],
        setup_model(_load(["model.hidden_size=8"])).state_dict()["layers.0.weight_hh_l0"],
    )


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_the_reported_training_loss_is_the_mean_over_all_processes(trained, case):
    single, ranks = trained
    assert len(single[case]["losses"]) == 4  # 2 iterations x 2 epochs
    for rank in ranks:
        assert rank[case]["losses"] == pytest.approx(single[case]["losses"], rel=1e-6, abs=1e-7)


# --- masked batches of different lengths on each process --------------------------------------------

# Global batch of 4 sequences of 37, 12, 50 and 20 steps: rank 0 pads its two to 37, rank 1 to 50.
MASKED_LENGTHS = (37, 12, 50, 20)
MASKED_CASES = {
    "fused": {"tbptt_steps": 8, "update": "window"},  # an optimizer step per window: 7 windows on every rank
    "fused-detached": {"tbptt_steps": 1, "chunk_steps": 16},
    "stepwise": {"tbptt_steps": 8, "execution": "stepwise"},
}


def _train_masked(local_rank: int, out: str) -> None:
    rank, world = idist.get_rank(), idist.get_world_size()
    gen = torch.Generator().manual_seed(0)
    sequences = [
        (torch.randn(n, 3, generator=gen, dtype=torch.float64), torch.randn(n, 1, generator=gen, dtype=torch.float64))
        for n in MASKED_LENGTHS
    ]
    share = len(sequences) // world
    batch = collate_sequences(sequences[rank * share : (rank + 1) * share])
    results = {}
    for case, kwargs in MASKED_CASES.items():
        torch.manual_seed(0)
        model = idist.auto_model(StatefulLSTM(3, 6, num_layers=2).double())
        trainer = create_trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.nn.MSELoss(), **kwargs)
        losses = []
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"]))  # noqa: B023
        trainer.run([batch, batch], max_epochs=1)
        net = model.module if hasattr(model, "module") else model
        results[case] = {
            "params": {k: v.clone() for k, v in net.state_dict().items()},
            "losses": losses,
            "execution": trainer.state.execution,
            "steps": batch[0].shape[1],
        }
    torch.save(results, Path(out) / f"masked-{rank}-of-{world}.pt")


@pytest.fixture(scope="module")
def trained_masked(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed-masked")
    _train_masked(0, str(root))
    _spawn(_train_masked, str(root))
    return torch.load(root / "masked-0-of-1.pt"), [torch.load(root / f"masked-{r}-of-2.pt") for r in range(WORLD)]


@pytest.mark.parametrize("case", list(MASKED_CASES))
def test_masked_batches_of_other_lengths_on_two_processes_train_as_one_process(trained_masked, case):
    single, ranks = trained_masked
    assert [r[case]["steps"] for r in ranks] == [37, 50] and single[case]["steps"] == 50
    assert single[case]["execution"] == ranks[0][case]["execution"] == case
    for rank in ranks:  # the mean over all counted steps of all processes, and its gradient
        assert rank[case]["losses"] == pytest.approx(single[case]["losses"], rel=1e-10)
        for name, value in single[case]["params"].items():
            assert ((rank[case]["params"][name] - value).norm() / value.norm()).item() <= 1e-10, (case, name)


# --- run.py on 2 processes --------------------------------------------------------------------------

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


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_nan_loss_on_one_process_stops_both_with_exit_3(two_process_run):
    cwd, _, _, _ = two_process_run
    # update=sequence: rank 1's own loss of that iteration is finite (its weights change only after it)
    args = ["quick.yaml", "name=nan", "train.update=sequence", "handlers.extra=[test_distributed:nan_on_rank_0]"]
    proc = _run_py(args, cwd, {"NAN_AT": "3"})
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 3, err
    assert "error: Loss became nan at epoch 2, iteration 3; training stopped. The last good checkpoint is " in err
    assert "Traceback" not in err
    assert sorted(p.name for p in (cwd / "runs" / "nan" / "checkpoints").glob("last_*")) == ["last_checkpoint_2.pt"]
