"""The carried state in checkpoints of the trainer, on one process and on two (gloo).

- a real checkpoint file (Ignite's ``Checkpoint`` + ``DiskSaver``, read back with
  ``weights_only=True``) written in the middle of an epoch resumes the carried state: the
  resumed run ends with the parameters of the run left alone;
- on 2 processes each rank carries its own lanes (the parameters are those of one process
  with all lanes in one batch), the file holds every lane in rank order (the state of that
  one process) and each rank loads its own; a rank padded to the other's batch length is
  marked stale; a mid-epoch file of 2 processes is refused on 1, an end-of-epoch one starts
  fresh.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import ignite.distributed as idist
import pytest
import torch
import torch.nn as nn
from carry_helpers import TOL, C, chunked, make_model, max_rel, rel, same_state, stream
from ignite.engine import Events
from ignite.handlers import Checkpoint, DiskSaver

from ignite_lstm.checkpoint.resume import SkipBatches
from ignite_lstm.engine.factories import create_trainer, reset_state
from ignite_lstm.engine.state import state_tensors

LANES = 4  # of the global batch: 2 per rank on 2 processes


def _trainer(model=None):
    model = model if model is not None else make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = create_trainer(model, optimizer, nn.MSELoss(), tbptt_steps=C, update="window", carry_state=True)
    return model, optimizer, trainer


def _save_at(trainer, objects: dict, folder: Path, *iterations: int) -> None:
    saver = Checkpoint(objects, DiskSaver(folder, require_empty=False), n_saved=None)
    for i in iterations:
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=i), saver)


def test_a_checkpoint_written_mid_epoch_resumes_the_carried_state(tmp_path):
    chunks = chunked(stream())  # 3 chunks per epoch
    model, optimizer, trainer = _trainer()
    _save_at(trainer, {"model": model, "optimizer": optimizer, "trainer": trainer}, tmp_path, 4)
    at = {}
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=4), lambda e: at.update(state=e.state.carried_state))
    trainer.run(chunks, max_epochs=2)
    checkpoint = torch.load(tmp_path / "checkpoint_4.pt", weights_only=True)
    assert checkpoint["trainer"]["carried_state"]["lanes"].tolist() == [3]
    results = {}
    for forget in (False, True):
        model2, optimizer2, trainer2 = _trainer()
        Checkpoint.load_objects({"model": model2, "optimizer": optimizer2, "trainer": trainer2}, checkpoint)
        assert same_state(trainer2.state.carried_state, at["state"])
        if forget:  # guard: the same resume without the carried state
            reset_state(trainer2)
        data = SkipBatches(chunks)
        data.skip = trainer2.state.iteration % len(chunks)  # 1: the epoch continues at its second chunk
        trainer2.run(data, max_epochs=2)
        results[forget] = model2
    assert max_rel(results[False], model) == 0.0
    assert max_rel(results[True], model) > 1e-6


# --- 2 gloo processes ----------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _carry_lanes(local_rank: int, out: str) -> None:
    rank, world = idist.get_rank(), idist.get_world_size()
    share = LANES // world
    mine = {k: v[rank * share : (rank + 1) * share] for k, v in stream(lanes=LANES).items()}
    folder = Path(out) / f"checkpoints-{world}"
    model, optimizer, trainer = _trainer(idist.auto_model(make_model()))
    _save_at(trainer, {"model": model, "trainer": trainer}, folder, 2, 3)  # the middle and the end of the epoch
    at = {}
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=2), lambda e: at.update(state=e.state.carried_state))
    trainer.run(chunked(mine), max_epochs=1)
    idist.barrier()  # rank 0 has written the files
    _, _, loaded = _trainer()
    Checkpoint.load_objects({"trainer": loaded}, torch.load(folder / "checkpoint_2.pt", weights_only=True))
    # a batch one step shorter on rank 1: padded to rank 0's length, its lanes are stale
    short = chunked(mine)[:1]
    short[0] = {k: v[:, : C - 1] for k, v in short[0].items()} if rank == 1 else short[0]
    _, _, padded = _trainer(idist.auto_model(make_model()))
    padded.run(short, max_epochs=1)
    stale = padded.state_dict()["carried_state"]["stale"].tolist()  # every rank calls state_dict: it gathers
    net = model.module if hasattr(model, "module") else model
    torch.save(
        {
            "params": [p.detach().clone() for p in net.parameters()],
            "at_2": at["state"],
            "loaded": loaded.state.carried_state,
            "stale": stale,
        },
        Path(out) / f"carry-{rank}-of-{world}.pt",
    )


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    root = tmp_path_factory.mktemp("carry-distributed")
    _carry_lanes(0, str(root))
    idist.spawn("gloo", _carry_lanes, (str(root),), nproc_per_node=2, master_port=_free_port(), start_method="fork")
    single = torch.load(root / "carry-0-of-1.pt")
    return root, single, [torch.load(root / f"carry-{r}-of-2.pt") for r in range(2)]


def test_each_of_two_processes_carries_its_lanes_as_one_process_carries_all(two_processes):
    _, single, ranks = two_processes
    for rank in ranks:
        assert max(rel(p, q) for p, q in zip(rank["params"], single["params"])) <= TOL
    for r, rank in enumerate(ranks):  # lanes 2r and 2r + 1 of the one-process state
        for mine, whole in zip(state_tensors(rank["at_2"]), state_tensors(single["at_2"])):
            assert rel(mine, whole[:, 2 * r : 2 * r + 2]) <= TOL


def test_a_checkpoint_of_two_processes_holds_every_lane_and_each_rank_loads_its_own(two_processes):
    root, single, ranks = two_processes
    saved = torch.load(root / "checkpoints-2" / "checkpoint_2.pt", weights_only=True)["trainer"]["carried_state"]
    assert saved["lanes"].tolist() == [2, 2] and saved["stale"].tolist() == [False, False]
    for got, expected in zip(state_tensors(saved["state"]), state_tensors(single["at_2"])):
        assert got.shape == expected.shape == (2, LANES, 5) and rel(got, expected) <= TOL
    for rank in ranks:
        assert same_state(rank["loaded"], rank["at_2"])
    assert ranks[0]["stale"] == ranks[1]["stale"] == [False, True] and single["stale"] == [False]


def test_a_checkpoint_of_two_processes_resumes_on_one_only_at_an_epoch_end(two_processes):
    root, _, _ = two_processes
    _, _, trainer = _trainer()
    msg = (
        "Argument state_dict holds the carried state of 2 processes (lanes [2, 2]) in the middle of an epoch; this "
        "run has 1: resume it on 2 processes, or from a checkpoint taken at the end of an epoch."
    )
    with pytest.raises(ValueError, match=re.escape(msg)):
        trainer.load_state_dict(torch.load(root / "checkpoints-2" / "checkpoint_2.pt", weights_only=True)["trainer"])
    trainer.load_state_dict(torch.load(root / "checkpoints-2" / "checkpoint_3.pt", weights_only=True)["trainer"])
    assert trainer.state.carried_state is None and trainer.state.iteration == 3  # the next epoch starts fresh
