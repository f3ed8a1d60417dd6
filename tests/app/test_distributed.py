"""Data-parallel runs on 2 gloo CPU processes compute what one process computes.

- evaluation counts every sequence once, also with an odd number of sequences and with
  a rank that holds none;
- with the same global batch and seed, the parameters after a few optimizer steps equal
  those of one process, on the fused window, fused-detached and stepwise paths;
- the reported training loss is the mean over the processes (the global batch's);
- masked batches of sequences of different lengths (each process padding to its own
  longest) give the loss and parameters of one process on the whole batch;
- ``run.py`` on 2 processes: ``test_distributed_cli.py``.

Processes are started once per test (``idist.spawn`` with fork, or ``run.py`` as a
subprocess), since each start costs seconds on a small machine.
"""

from __future__ import annotations

import socket
from pathlib import Path

import ignite.distributed as idist
import pytest
import torch
from ignite.engine import Events
from ignite.utils import manual_seed

from ignite_lstm.app.config.schema import load_config
from ignite_lstm.app.run.evaluate import evaluate_splits
from ignite_lstm.app.run.setup import setup_evaluators
from ignite_lstm.app.run.training import setup
from ignite_lstm.app.task.dataset import setup_data
from ignite_lstm.app.task.model import setup_model
from ignite_lstm.engine.batches import collate_sequences
from ignite_lstm.engine.factories import create_trainer
from ignite_lstm.models.lstm import StatefulLSTM

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

# 8 training sequences, global batch 4 (2 per process), 2 epochs: 2 iterations per epoch. Plain SGD
# without momentum or clipping at a constant rate: a step is the rate times the gradient, so a gradient
# summed over the processes instead of averaged would double every step (Adam's normalised steps and a
# clipped norm would hide that); no files but history.json.
TRAIN_COMMON = [
    "data.train.mixtures=2",
    "train.batch_size=4",
    "model.hidden_size=8",
    "model.init=default",  # torch's gates: every weight moves by more than the 1e-3 the ratio needs (chrono's saturated ones barely do)
    "train.optimizer=sgd",
    "train.momentum=0",
    "train.lr=0.5",
    "train.grad_clip=null",
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
    "stepwise": ["data.duration=0.02", "train.tbptt_steps=5", "train.update=sequence", "train.execution=stepwise"],
}


def _train(local_rank: int, data_dir: str, out: str) -> None:
    results = {}
    for case, overrides in TRAIN_CASES.items():
        cfg = _load([*TRAIN_COMMON, *overrides, f"data.dir={data_dir}"])
        run_dir = Path(out) / f"run-{case}-of-{idist.get_world_size()}"
        run_dir.mkdir(exist_ok=True)
        s = setup(cfg, run_dir)  # the run's own wiring: seed, data, model, optimizer, trainer and handlers
        initial = {k: v.clone() for k, v in s.net.state_dict().items()}
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
            "initial": initial,
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
        # what training changed, on two processes against one: 1 where the gradient is the mean, 2 for a sum
        moved = (value - single[case]["initial"][name]).norm()
        ratio = (ranks[0][case]["params"][name] - single[case]["initial"][name]).norm() / moved
        assert moved > 1e-3 and abs(ratio.item() - 1) < 1e-3, (case, name, moved.item(), ratio.item())
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
