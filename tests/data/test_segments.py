"""``StreamLoader(..., consecutive=True)``: each series cut into consecutive lane segments of whole chunks."""

from __future__ import annotations

import pytest
import torch

from ignite_lstm.data.streams import StreamLoader


def _series(steps: int, start: float = 0.0):
    x = torch.arange(steps, dtype=torch.float64)[:, None] + start
    return x, -x


def _lanes(loader: StreamLoader) -> list[torch.Tensor]:
    """Each lane's counted x values over one pass, in order."""
    batches = list(loader)
    return [torch.cat([b["x"][i][b["mask"][i]] for b in batches])[:, 0] for i in range(loader.lanes)]


def test_one_series_is_cut_into_consecutive_lanes_of_whole_chunks():
    x, y = _series(100)
    loader = StreamLoader([(x, y)], lanes=4, chunk_steps=8, consecutive=True)
    assert [(s.start, s.stop) for s in loader.series] == [
        (0, 24),
        (24, 48),
        (48, 72),
        (72, 100),
    ]  # 13 chunks: the last lane ends last
    assert loader.sources == [0, 0, 0, 0] and len(loader) == 4
    lanes = _lanes(loader)
    assert torch.equal(torch.cat(lanes), x[:, 0])  # lane k continues where lane k - 1 ends
    first = next(iter(loader))
    assert bool(first["reset"].all()) and bool(first["mask"].all())
    plain = StreamLoader([(x, y)], lanes=4, chunk_steps=8)
    assert len(plain) == 13 and int(next(iter(plain))["mask"][1:].sum()) == 0  # guard: one lane busy, three idle


def test_several_series_each_give_their_share_of_the_lanes():
    a, b = _series(40), _series(24, start=1000.0)
    loader = StreamLoader([a, b], lanes=4, chunk_steps=8, consecutive=True)
    assert loader.sources == [0, 0, 1, 1]
    lanes = _lanes(loader)
    assert torch.equal(torch.cat(lanes[:2]), a[0][:, 0]) and torch.equal(torch.cat(lanes[2:]), b[0][:, 0])


def test_consecutive_refuses_what_it_cannot_cut():
    with pytest.raises(ValueError, match="divisible by the number of series"):
        StreamLoader([_series(40), _series(40)], lanes=3, chunk_steps=8, consecutive=True)
    with pytest.raises(ValueError, match=r"series\[0\] has 20 steps, 3 chunks of 8: too short for 4"):
        StreamLoader([_series(20)], lanes=4, chunk_steps=8, consecutive=True)
    with pytest.raises(TypeError, match="consecutive should be a bool"):
        StreamLoader([_series(20)], lanes=1, chunk_steps=8, consecutive=1)
