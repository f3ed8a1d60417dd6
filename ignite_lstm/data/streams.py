"""Series laid out in lanes and cut into chunks: the batches of a trainer that carries its state across batches.

``StreamLoader`` lays a list of series (of any lengths) out in B lanes and yields
consecutive chunks of C steps as batches ``{"x", "y", "mask", "reset"}``: lane i
of batch k + 1 continues lane i of batch k.

Packing order. A series of T_i steps takes ``ceil(T_i / C)`` chunks of its lane and
always starts at a chunk boundary. Series are taken in the given order; each goes
into the lane that frees first (the fewest chunks taken so far, the lowest lane on a
tie) and starts right after the lane's previous series ends. Equal series fill the
lanes round robin: series j is lane ``j % B``, ``j // B``-th. An epoch is
``max_lane_chunks`` chunks, the same in every epoch (``len(loader)``).

In a batch: ``x`` (B, C, F), ``y`` (B, C, O), ``mask`` (B, C) bool, False after a
series ends inside the chunk (the rest of the chunk is padding: the next series starts
at the next chunk), after a lane's last series and in a lane with no series; ``reset``
(B,) bool, True for a lane whose chunk is the first of a series. Padding is 0.

Shuffling (``shuffle=True``) keeps the layout's shape, so every epoch has the same
length and no chunk is wasted: the epoch's generator (``seed + epoch``) draws the order
of the series within each lane, then which series of the same length in chunks fills
each place of that length (with equal lengths: any series anywhere). The chunks of a
series are always consecutive and in order.

Resume. The loader knows the next chunk it yields, ``(epoch, position)``: a pass
(``iter()``) goes from there to the end of that epoch, and the one after it is the
next epoch, as Ignite's ``Engine`` calls ``iter()`` once per epoch. ``state_dict()``
saved after k batches and loaded into a new loader makes its next pass yield batch
k + 1 onwards, and the later epochs equal those of the loader left alone: put the loader
in ``Checkpoint``'s ``to_save``, and do not also skip batches with ``SkipBatches`` (that
would skip them twice). Left out of the checkpoint, the loader is exact under
``SkipBatches`` too, given ``set_epoch(engine.state.epoch - 1)`` at ``Events.EPOCH_STARTED``,
but then the skipped chunks are read.

Several processes: every rank lays out all B lanes alike and yields its own
``B / world_size`` consecutive lanes (rank r: lanes ``r * B / W`` to ``(r + 1) * B / W - 1``),
the same number of chunks on every rank; the ranks' batches concatenated in rank order
are the one-process batch.
"""

from __future__ import annotations

import bisect
import heapq
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import ignite.distributed as idist
import torch

from ignite_lstm.data.segments import consecutive_segments
from ignite_lstm.data.sources import as_series

__all__ = ["StreamLoader"]

logger = logging.getLogger(__name__)

_LAYOUT_KEYS = ("lanes", "chunk_steps", "series", "steps", "shuffle", "seed")  # what a state must match


def _int_arg(name: str, value: Any, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"Argument {name} should be an integer, got {type(value).__name__}.")
    if value < low:
        raise ValueError(f"Argument {name} should be an integer >= {low}, got {value}.")
    return value


def _pack(chunks: list[int], lanes: int) -> list[list[int]]:
    """Each series in turn into the lane that frees first (fewest chunks, lowest index on a tie)."""
    free = [(0, lane) for lane in range(lanes)]
    out: list[list[int]] = [[] for _ in range(lanes)]
    for i, n in enumerate(chunks):
        used, lane = heapq.heappop(free)
        out[lane].append(i)
        heapq.heappush(free, (used + n, lane))
    return out


class StreamLoader:
    """Batches of B lanes, C steps each, from series of any lengths; lane i continues across batches.

    See the module's docstring for the packing order, shuffling, resume and several processes.

    Args:
        series: a list of ``(x, y)`` pairs (x (T_i, F), y (T_i, O) numpy arrays or tensors),
            ``{"x": x, "y": y}`` mappings or ``H5Series`` (from ``h5_series``), all with the
            same F, O and dtypes (the batches keep them).
        lanes: B, the lanes of the global batch, divisible by ``world_size``. Lanes left without
            a series (more lanes than series) are fully masked.
        chunk_steps: C, the steps of a batch (e.g. the trainer's ``tbptt_steps``).
        shuffle: draw a new order of the series per epoch (deterministic by ``seed + epoch``).
        consecutive: cut each series into ``lanes / len(series)`` consecutive segments of whole
            chunks, segment k in lane k (``ignite_lstm.data.segments``): one long record keeps
            every lane busy. ``loader.series`` are then the segments, ``loader.sources[k]`` the
            given series segment k comes from.
        seed: the shuffle's seed, the same on every rank.
        rank, world_size: this process and their number (default: ``idist``'s); this rank
            yields lanes ``rank * B / world_size`` to ``(rank + 1) * B / world_size - 1``.

    A batch is ``{"x": (b, C, F), "y": (b, C, O), "mask": (b, C) bool, "reset": (b,) bool}``
    with ``b = B / world_size``; ``len(loader)`` is the chunks of an epoch.

    Example::

        loader = StreamLoader([(x1, y1), (x2, y2), (x3, y3)], lanes=2, chunk_steps=50, shuffle=True)
        trainer.run(loader, max_epochs=10)       # create_trainer(..., carry_state=True)
        to_save = {"trainer": trainer, "loader": loader}   # a mid-epoch checkpoint resumes exactly
    """

    def __init__(
        self,
        series: Any,
        lanes: int,
        chunk_steps: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        consecutive: bool = False,
    ) -> None:
        self.lanes = _int_arg("lanes", lanes, 1)
        self.chunk_steps = _int_arg("chunk_steps", chunk_steps, 1)
        if not isinstance(shuffle, bool):
            raise TypeError(f"Argument shuffle should be a bool, got {type(shuffle).__name__}.")
        self.shuffle, self.seed = shuffle, _int_arg("seed", seed, 0)
        self.world_size = _int_arg("world_size", idist.get_world_size() if world_size is None else world_size, 1)
        self.rank = _int_arg("rank", idist.get_rank() if rank is None else rank, 0)
        if self.rank >= self.world_size:
            raise ValueError(f"Argument rank should be below world_size={self.world_size}, got {self.rank}.")
        if lanes % self.world_size:
            raise ValueError(
                f"Argument lanes should be divisible by world_size={self.world_size} (each process "
                f"owns lanes / world_size lanes), got {lanes}."
            )
        if not isinstance(consecutive, bool):
            raise TypeError(f"Argument consecutive should be a bool, got {type(consecutive).__name__}.")
        self.series = as_series(series)
        self.sources = list(range(len(self.series)))  # the given series each of self.series comes from
        if consecutive:
            self.series, self.sources = consecutive_segments(self.series, lanes, chunk_steps)
        self.local_lanes = lanes // self.world_size
        self._first = self.rank * self.local_lanes
        self._chunks = [-(-len(s) // chunk_steps) for s in self.series]
        self._packed = _pack(self._chunks, lanes)
        self._length = max(sum(self._chunks[i] for i in lane) for lane in self._packed)
        self._by_chunks: dict[int, list[int]] = {}
        for i, n in enumerate(self._chunks):
            self._by_chunks.setdefault(n, []).append(i)
        self._epoch, self._position, self._token = 0, 0, 0
        self._cached: tuple[int, list[list[int]], list[list[int]]] | None = None
        empty = sum(not lane for lane in self._packed)
        if empty:
            logger.warning(
                "StreamLoader: %d of the %d lanes hold no series (only %d series); they are fully masked.",
                empty,
                lanes,
                len(self.series),
            )

    def __len__(self) -> int:
        return self._length

    @property
    def epoch(self) -> int:
        """The epoch (from 0) of the next chunk."""
        return self._epoch

    @property
    def position(self) -> int:
        """The next chunk's index in its epoch: the batches already yielded of it."""
        return self._position

    def layout(self, epoch: int | None = None) -> list[list[int]]:
        """The series (indices into ``series``) of every lane of the global batch in ``epoch``, in play order.

        Args:
            epoch: default: the epoch of the next chunk.

        Returns:
            B lists; lane l plays its series one after the other, each from a chunk boundary.
        """
        epoch = self._epoch if epoch is None else _int_arg("epoch", epoch, 0)
        if not self.shuffle:
            return [list(lane) for lane in self._packed]
        g = torch.Generator().manual_seed(self.seed + epoch)
        lanes = [[lane[j] for j in torch.randperm(len(lane), generator=g).tolist()] for lane in self._packed]
        places: dict[int, list[tuple[int, int]]] = {}  # chunks -> (lane, index) of the series that long
        for lane, members in enumerate(lanes):
            for j, i in enumerate(members):
                places.setdefault(self._chunks[i], []).append((lane, j))
        for n in sorted(places):
            same = self._by_chunks[n]
            for (lane, j), k in zip(places[n], torch.randperm(len(same), generator=g).tolist()):
                lanes[lane][j] = same[k]
        return lanes

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass start ``epoch`` from its first chunk; no change when the loader is in it already.

        What ``DistributedSampler.set_epoch`` is to a ``DataLoader``, with one difference that
        keeps a mid-epoch resume exact: called (from ``Events.EPOCH_STARTED``) with the epoch
        the loader is in, after ``load_state_dict``, it keeps the loaded position.

        Args:
            epoch: from 0 (Ignite's ``engine.state.epoch - 1``).
        """
        if _int_arg("epoch", epoch, 0) != self._epoch:
            self._epoch, self._position = epoch, 0
            self._token += 1  # a live iterator would continue another epoch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        self._token += 1
        return self._pass(self._token, self._epoch, self._position)

    def _pass(self, token: int, epoch: int, start: int) -> Iterator[dict[str, torch.Tensor]]:
        if self._cached is None or self._cached[0] != epoch:
            lanes = self.layout(epoch)
            starts = [[0] * len(lane) for lane in lanes]
            for lane, members in enumerate(lanes):
                for j in range(1, len(members)):
                    starts[lane][j] = starts[lane][j - 1] + self._chunks[members[j - 1]]
            self._cached = (epoch, lanes, starts)
        _, lanes, starts = self._cached
        for k in range(start, self._length):
            if token != self._token:
                raise RuntimeError(
                    "This StreamLoader iterator is stale: a later iter(loader), set_epoch or "
                    "load_state_dict moved the loader's position; iterate the new one."
                )
            batch = self._batch(lanes, starts, k)
            self._epoch, self._position = (epoch, k + 1) if k + 1 < self._length else (epoch + 1, 0)
            yield batch

    def _batch(self, lanes: list[list[int]], starts: list[list[int]], k: int) -> dict[str, torch.Tensor]:
        b, steps = self.local_lanes, self.chunk_steps
        first = self.series[0]
        x = torch.zeros(b, steps, first.features, dtype=first.dtypes[0])  # (b, C, F)
        y = torch.zeros(b, steps, first.outputs, dtype=first.dtypes[1])  # (b, C, O)
        mask = torch.zeros(b, steps, dtype=torch.bool)  # (b, C)
        reset = torch.zeros(b, dtype=torch.bool)  # (b,)
        for row in range(b):
            lane = self._first + row
            j = bisect.bisect_right(starts[lane], k) - 1
            if j < 0:  # a lane without series
                continue
            i = lanes[lane][j]
            chunk = k - starts[lane][j]
            if chunk >= self._chunks[i]:  # past the lane's last series
                continue
            begin = chunk * steps
            xs, ys = self.series[i].read(begin, min(begin + steps, len(self.series[i])))
            n = xs.shape[0]
            x[row, :n], y[row, :n], mask[row, :n], reset[row] = xs, ys, True, chunk == 0
        return {"x": x, "y": y, "mask": mask, "reset": reset}

    def _fingerprint(self) -> dict[str, int]:
        return {
            "lanes": self.lanes,
            "chunk_steps": self.chunk_steps,
            "series": len(self.series),
            "steps": sum(len(s) for s in self.series),
            "shuffle": int(self.shuffle),
            "seed": self.seed,
        }

    def state_dict(self) -> dict[str, int]:
        """The next chunk (``epoch``, ``position``) and the layout it belongs to, as plain ints.

        Returns:
            ``{"epoch", "position", "lanes", "chunk_steps", "series", "steps", "shuffle", "seed"}``;
            loadable with ``torch.load(..., weights_only=True)``. The same on every rank.
        """
        return {"epoch": self._epoch, "position": self._position, **self._fingerprint()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Continue from a saved position: the next pass starts at its next chunk.

        Args:
            state_dict: from ``state_dict()`` of a loader over the same series, lanes,
                chunk_steps, shuffle and seed (any number of processes).

        Raises:
            ValueError: a key is missing, the layout differs, or the position is out of range.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"Argument state_dict should be a mapping, got {type(state_dict).__name__}.")
        missing = [k for k in ("epoch", "position", *_LAYOUT_KEYS) if k not in state_dict]
        if missing:
            raise ValueError(f"Argument state_dict should have keys {missing}, got {sorted(state_dict)}.")
        diffs = [
            f"{k}={int(state_dict[k])} (this loader: {v})"
            for k, v in self._fingerprint().items()
            if int(state_dict[k]) != v
        ]
        if diffs:
            raise ValueError(
                f"Argument state_dict was saved by a loader of another layout: {'; '.join(diffs)}; a "
                f"stream resumes with the same series, lanes, chunk_steps, shuffle and seed."
            )
        epoch, position = int(state_dict["epoch"]), int(state_dict["position"])
        if epoch < 0 or not 0 <= position < self._length:
            raise ValueError(
                f"Argument state_dict should have epoch >= 0 and 0 <= position < {self._length}, "
                f"got epoch={epoch}, position={position}."
            )
        self._epoch, self._position = epoch, position
        self._token += 1
