"""StreamLoader: series in lanes, cut into chunks; packing order, masks and resets, shuffling, resume, ranks.

Every series here has x[t] = (series id, t) and y[t] = -(t + 1), so a batch says which step of
which series each position holds; ``_replay`` rebuilds the series from the batches while
checking the stream rules (a series starts at a chunk with reset, continues in the same lane,
its padding is masked and zero, a lane that ran out stays out).
"""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from test_distributed import _spawn

from ignite_lstm.checkpoint.resume import SkipBatches
from ignite_lstm.data.sources import h5_series
from ignite_lstm.data.streams import StreamLoader
from ignite_lstm.engine.batches import check_mask


def _series(lengths, dtype=np.float32):
    return [
        (np.stack([np.full(n, i), np.arange(n)], axis=1).astype(dtype), -np.arange(1, n + 1, dtype=dtype)[:, None])
        for i, n in enumerate(lengths)
    ]


def _epoch(loader):
    batches = list(loader)
    assert len(batches) == len(loader)
    return batches


def _replay(batches, lanes: int, chunk: int) -> dict[int, torch.Tensor]:
    """Each series' x rows in the order the batches gave them; asserts the stream rules on the way."""
    got: dict[int, list[torch.Tensor]] = {}
    current, idle = [None] * lanes, [False] * lanes
    for b in batches:
        assert b["x"].shape[:2] == b["y"].shape[:2] == b["mask"].shape == (lanes, chunk)
        assert b["reset"].shape == (lanes,) and b["mask"].dtype == b["reset"].dtype == torch.bool
        for lane in range(lanes):
            mask, x = b["mask"][lane], b["x"][lane]
            n = int(mask.sum())
            assert mask[:n].all() and not mask[n:].any()  # the counted steps first, then padding
            assert not x[n:].any() and not b["y"][lane, n:].any()
            assert not (idle[lane] and n), "a lane continues right after its previous series"
            idle[lane] = n == 0
            if b["reset"][lane]:
                sid = int(x[0, 0])
                assert n and int(x[0, 1]) == 0 and sid not in got  # a series starts at a chunk, once
                got[sid], current[lane] = [], sid
            elif n:
                assert current[lane] is not None and int(x[0, 0]) == current[lane]
            else:
                assert not b["reset"][lane]
            if n:
                got[current[lane]].append(x[:n])
                assert (b["y"][lane, :n, 0] == -(x[:n, 1] + 1)).all()
            if n < chunk:  # a series that ends inside a chunk: the next chunk of the lane starts another
                current[lane] = None
    return {sid: torch.cat(rows) for sid, rows in got.items()}


def _check_every_step_once_in_order(batches, series, lanes, chunk):
    got = _replay(batches, lanes, chunk)
    assert sorted(got) == list(range(len(series)))
    for sid, (x, _) in enumerate(series):
        assert torch.equal(got[sid], torch.from_numpy(x)), sid


# --- packing order, masks, resets ------------------------------------------------------------------


def test_each_series_goes_into_the_lane_that_frees_first():
    # chunks of 3 steps: [3, 1, 2, 1, 3]; lane 0 takes 0, lane 1 takes 1 and 2, tie at 3 chunks: lane 0 takes 3
    loader = StreamLoader(_series([7, 3, 5, 2, 9]), lanes=2, chunk_steps=3)
    assert loader.layout() == [[0, 3], [1, 2, 4]]
    assert len(loader) == 6  # lane 1: 1 + 2 + 3 chunks
    assert StreamLoader(_series([4] * 7), lanes=3, chunk_steps=2).layout() == [[0, 3, 6], [1, 4], [2, 5]]


def test_resets_and_masks_sit_where_the_series_start_and_end():
    batches = _epoch(StreamLoader(_series([7, 3, 5, 2, 9]), lanes=2, chunk_steps=3))
    counted = [[int(b["mask"][lane].sum()) for b in batches] for lane in range(2)]
    resets = [[bool(b["reset"][lane]) for b in batches] for lane in range(2)]
    assert counted == [[3, 3, 1, 2, 0, 0], [3, 3, 2, 3, 3, 3]]  # the last chunk masked, not dropped
    assert resets == [[True, False, False, True, False, False], [True, True, False, True, False, False]]
    assert batches[2]["x"][0, 0].tolist() == [0, 6]  # series 0 ends inside chunk 2; series 3 starts at chunk 3
    assert batches[3]["x"][0, 0].tolist() == [3, 0]


@pytest.mark.parametrize(
    "lengths", [[7, 3, 5, 2, 9], [1] * 5, [10], [4] * 7, np.random.default_rng(0).integers(1, 30, size=23).tolist()]
)
@pytest.mark.parametrize("lanes, chunk", [(1, 4), (3, 1), (4, 5), (8, 3)])
@pytest.mark.parametrize("shuffle", [False, True])
def test_every_step_of_every_series_appears_once_in_order(lengths, lanes, chunk, shuffle):
    series = _series(lengths)
    loader = StreamLoader(series, lanes=lanes, chunk_steps=chunk, shuffle=shuffle, seed=7)
    for _ in range(3):  # three epochs, each a whole pass
        _check_every_step_once_in_order(_epoch(loader), series, lanes, chunk)


def test_lanes_without_series_are_fully_masked_and_warned_about(caplog):
    with caplog.at_level(logging.WARNING, logger="ignite_lstm.data.streams"):
        loader = StreamLoader(_series([5, 2]), lanes=4, chunk_steps=2)
    assert "2 of the 4 lanes hold no series" in caplog.text
    for b in _epoch(loader):
        assert not b["mask"][2:].any() and not b["reset"][2:].any()


def test_batches_keep_the_dtypes_and_pass_the_batch_checks():
    for dtype, expected in ((np.float32, torch.float32), (np.float64, torch.float64)):
        b = next(iter(StreamLoader(_series([5, 3], dtype), lanes=2, chunk_steps=4)))
        assert set(b) == {"x", "y", "mask", "reset"}
        assert b["x"].dtype == b["y"].dtype == expected
        assert b["x"].shape == (2, 4, 2) and b["y"].shape == (2, 4, 1)
        assert check_mask(b["mask"], b["x"]) is b["mask"]


# --- epochs, shuffling ---------------------------------------------------------------------------------


def _xs(batches):
    return torch.stack([b["x"] for b in batches])


def test_shuffle_is_deterministic_by_seed_differs_by_epoch_and_keeps_the_length():
    series = _series([7, 3, 5, 2, 9, 7, 3, 1, 4])
    a, b = (StreamLoader(series, lanes=3, chunk_steps=3, shuffle=True, seed=1) for _ in range(2))
    epochs = [_xs(_epoch(a)) for _ in range(3)]
    assert all(torch.equal(e, _xs(_epoch(b))) for e in epochs)  # the same seed: the same epochs
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[1], epochs[2])
    assert a.layout(0) != a.layout(1)
    other = StreamLoader(series, lanes=3, chunk_steps=3, shuffle=True, seed=2)
    assert other.layout(0) != a.layout(0) and len(other) == len(a)
    plain = StreamLoader(series, lanes=3, chunk_steps=3)
    assert plain.layout(0) == plain.layout(5)


def test_shuffle_moves_equal_series_anywhere():
    loader = StreamLoader(_series([6] * 8), lanes=4, chunk_steps=3, shuffle=True, seed=0)
    lanes_of_0 = {next(lane for lane, members in enumerate(loader.layout(e)) if 0 in members) for e in range(12)}
    assert len(lanes_of_0) > 1  # deterministic: seed 0, epochs 0 to 11


def test_a_pass_continues_where_the_last_stopped_and_set_epoch_starts_another():
    series = _series([7, 3, 5, 2, 9])
    loader, alone = (StreamLoader(series, lanes=2, chunk_steps=3, shuffle=True, seed=4) for _ in range(2))
    whole = [_xs(_epoch(alone)) for _ in range(2)]
    it = iter(loader)
    first = [next(it), next(it)]
    assert (loader.epoch, loader.position) == (0, 2)
    loader.set_epoch(0)  # the epoch it is in: no change
    rest = list(loader)
    assert torch.equal(_xs(first + rest), whole[0])
    assert (loader.epoch, loader.position) == (1, 0)
    assert torch.equal(_xs(list(loader)), whole[1])
    loader.set_epoch(1)  # another epoch: from its first chunk
    assert torch.equal(_xs(list(loader)), whole[1])
    with pytest.raises(RuntimeError, match="iterator is stale"):
        stale = iter(loader)
        iter(loader)
        next(stale)


# --- resume ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("done", [0, 1, 4, 5])
def test_a_loader_loaded_after_k_batches_continues_with_the_next_and_later_epochs_equal(tmp_path, done):
    series = _series([7, 3, 5, 2, 9, 4])
    make = lambda: StreamLoader(series, lanes=2, chunk_steps=3, shuffle=True, seed=9)  # noqa: E731
    alone = make()
    expected = torch.cat([_xs(_epoch(alone)) for _ in range(3)])
    first = make()
    _epoch(first)  # epoch 0 done
    it = iter(first)
    head = [next(it) for _ in range(done)]
    torch.save(first.state_dict(), tmp_path / "loader.pt")
    resumed = make()
    resumed.load_state_dict(torch.load(tmp_path / "loader.pt", weights_only=True))
    rest = list(resumed) + list(resumed)
    assert torch.equal(torch.cat([expected[: len(alone)], _xs(head + rest)]), expected)


@pytest.mark.parametrize("how", ["loader state", "loader state and set_epoch", "SkipBatches and set_epoch"])
def test_an_engine_resumed_from_a_mid_epoch_checkpoint_sees_the_batches_of_one_left_alone(tmp_path, how):
    """The loader in the checkpoint (its own position), or out of it and skipped as ``resume.py`` does today."""
    series = _series([7, 3, 5, 2, 9, 4, 1])

    def engine_and_loader():
        loader, seen = StreamLoader(series, lanes=2, chunk_steps=3, shuffle=True, seed=3), []
        engine = Engine(lambda e, batch: seen.append(batch["x"]))
        if "set_epoch" in how:  # as trainers.py does for the DataLoader's sampler
            engine.add_event_handler(Events.EPOCH_STARTED, lambda e: loader.set_epoch(e.state.epoch - 1))
        objects = {"trainer": engine} if "SkipBatches" in how else {"trainer": engine, "loader": loader}
        return engine, SkipBatches(loader) if "SkipBatches" in how else loader, objects, seen

    engine, data, _, alone = engine_and_loader()
    engine.run(data, max_epochs=3)
    engine, data, objects, first = engine_and_loader()
    stop = len(data) + 2  # two batches into the second epoch
    checkpoint = Checkpoint(objects, DiskSaver(tmp_path, require_empty=False))
    engine.add_event_handler(Events.ITERATION_COMPLETED(once=stop), checkpoint)
    engine.add_event_handler(Events.ITERATION_COMPLETED(once=stop), lambda e: e.terminate())
    engine.run(data, max_epochs=3)
    engine, data, objects, rest = engine_and_loader()
    Checkpoint.load_objects(objects, torch.load(Path(checkpoint.last_checkpoint), weights_only=True))
    if isinstance(data, SkipBatches):
        data.skip = engine.state.iteration % engine.state.epoch_length  # what resume_from_checkpoint sets
    engine.run(data, max_epochs=3)
    assert len(first) == stop and torch.equal(torch.stack(first + rest), torch.stack(alone))


def test_a_state_of_another_layout_is_refused():
    series = _series([7, 3, 5])
    state = StreamLoader(series, lanes=2, chunk_steps=3).state_dict()
    with pytest.raises(ValueError, match=r"another layout: lanes=2 \(this loader: 3\)"):
        StreamLoader(series, lanes=3, chunk_steps=3).load_state_dict(state)
    with pytest.raises(ValueError, match=r"another layout: shuffle=0 \(this loader: 1\)"):
        StreamLoader(series, lanes=2, chunk_steps=3, shuffle=True).load_state_dict(state)
    with pytest.raises(ValueError, match=r"0 <= position < 3, got epoch=0, position=3"):
        StreamLoader(series, lanes=2, chunk_steps=3).load_state_dict({**state, "position": 3})
    with pytest.raises(ValueError, match=r"should have keys \['epoch'\]"):
        StreamLoader(series, lanes=2, chunk_steps=3).load_state_dict({k: v for k, v in state.items() if k != "epoch"})


# --- several processes --------------------------------------------------------------------------------


@pytest.mark.parametrize("world", [2, 4])
def test_the_ranks_lanes_together_are_the_one_process_batch(world):
    series = _series([7, 3, 5, 2, 9, 4, 1, 8, 6])
    single = StreamLoader(series, lanes=4, chunk_steps=3, shuffle=True, seed=2, rank=0, world_size=1)
    ranks = [
        StreamLoader(series, lanes=4, chunk_steps=3, shuffle=True, seed=2, rank=r, world_size=world)
        for r in range(world)
    ]
    assert {len(r) for r in ranks} == {len(single)} and {r.local_lanes for r in ranks} == {4 // world}
    for _ in range(2):
        parts = [_epoch(r) for r in ranks]
        for k, whole in enumerate(_epoch(single)):
            for key in whole:
                assert torch.equal(torch.cat([p[k][key] for p in parts]), whole[key]), (k, key)


def _stream_on_rank(local_rank: int, series, out: str) -> None:
    loader = StreamLoader(series, lanes=4, chunk_steps=3, shuffle=True, seed=2)  # rank, world from idist
    torch.save([b for _ in range(2) for b in loader], Path(out) / f"stream-{loader.rank}-of-{loader.world_size}.pt")


def test_two_gloo_processes_each_stream_their_lanes_from_the_file(tmp_path):
    path = tmp_path / "series.h5"
    with h5py.File(path, "w") as f:
        for i, (x, y) in enumerate(_series([7, 3, 5, 2, 9, 4, 1, 8, 6])):
            f[f"s{i}/x"], f[f"s{i}/y"] = x, y
    series = h5_series(path, group="/")  # opened here: the forked ranks open their own handle
    _stream_on_rank(0, series, str(tmp_path))
    _spawn(_stream_on_rank, series, str(tmp_path))
    single = torch.load(tmp_path / "stream-0-of-1.pt")
    ranks = [torch.load(tmp_path / f"stream-{r}-of-2.pt") for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(single)
    for k, whole in enumerate(single):
        assert all(torch.equal(torch.cat([ranks[0][k][key], ranks[1][k][key]]), whole[key]) for key in whole)


# --- bad arguments ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(lanes=0), ValueError, r"Argument lanes should be an integer >= 1, got 0"),
        (dict(chunk_steps=0), ValueError, r"Argument chunk_steps should be an integer >= 1, got 0"),
        (dict(chunk_steps=2.5), TypeError, r"Argument chunk_steps should be an integer, got float"),
        (dict(lanes=3, world_size=2, rank=0), ValueError, r"Argument lanes should be divisible by world_size=2"),
        (dict(rank=2, world_size=2), ValueError, r"Argument rank should be below world_size=2, got 2"),
        (dict(shuffle=1), TypeError, r"Argument shuffle should be a bool, got int"),
        (dict(series=[]), ValueError, r"Argument series should hold at least one series, got an empty list"),
        (
            dict(series=[(np.zeros((4, 2)), np.zeros((3, 1)))]),
            ValueError,
            r"series\[0\] should hold x \(T, F\) and y \(T, O\) with the same T >= 1, got shapes \(4, 2\) and \(3, 1\)",
        ),
        (dict(series=[(np.zeros(4), np.zeros((4, 1)))]), ValueError, r"series\[0\] x should be \(steps, features\)"),
    ],
)
def test_bad_arguments_are_refused_by_name(kwargs, error, match):
    args = {"series": _series([5, 3]), "lanes": 2, "chunk_steps": 2, **kwargs}
    with pytest.raises(error, match=match):
        StreamLoader(**args)
