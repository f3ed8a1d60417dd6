"""The streams of one server, their frames batched into model calls, their state kept on disk.

``StreamService`` is the server apart from HTTP: ``create``, ``submit`` (a frame in, the
future of its answer out), ``delete``, ``info``; the batching task (``batcher.Batcher``);
a snapshot task and an eviction task for ``--state-dir``. ``stop()`` answers every frame
accepted, then writes all streams (``clean``).

Sequence numbers: a stream accepts seq k = the number of frames it accepted before; a seq
already answered gets its kept answer again (the same bytes, the state not stepped), a seq in
flight shares the answer on its way, a seq ahead is refused (409) with the next seq.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from dataclasses import dataclass

import numpy as np

from ignite_lstm.app.serve.batcher import Batcher
from ignite_lstm.app.serve.batching import Frame
from ignite_lstm.app.serve.errors import ApiError
from ignite_lstm.app.serve.metrics import ServeMetrics
from ignite_lstm.app.serve.model import ServedModel
from ignite_lstm.app.serve.streams import STREAM_ID, StateDir, Stream

__all__ = ["ApiError", "Limits", "StreamService"]  # ApiError: from errors, for the API modules

logger = logging.getLogger("ignite_lstm.serve")


@dataclass
class Limits:
    """Batching and size limits (the command's options)."""

    max_batch: int = 1024  # streams (lanes) per model call
    max_wait: float = 0.002  # seconds from the oldest waiting frame's arrival to its call
    max_frame_samples: int = 4096
    max_streams: int = 10_000  # in memory and evicted
    max_queue: int = 8192  # frames accepted and not yet answered
    idle_evict: float = 300.0  # seconds without a frame before a stream leaves memory (0: never)
    snapshot_interval: float = 5.0  # seconds between snapshots (0: none)
    keep_answers: int = 4  # answers kept per stream for retries
    naive: bool = False  # one unbatched model call per frame, in the request (the benchmark's baseline)


class StreamService:
    """All streams of a server.

    Args:
        model: the served model.
        limits: ``Limits``.
        state_dir: where streams are kept across restarts (None: in memory only, no eviction).
    """

    def __init__(self, model: ServedModel, limits: Limits, state_dir: StateDir | None = None) -> None:
        self.model, self.limits, self.state_dir = model, limits, state_dir
        self.metrics = ServeMetrics()
        self.batcher = Batcher(
            model,
            max_batch=limits.max_batch,
            max_wait=limits.max_wait,
            keep_answers=limits.keep_answers,
            metrics=self.metrics,
            on_commit=self._changed,
        )
        self.metrics.queued.set_function(lambda: self.batcher.queued)
        self.streams: dict[str, Stream] = {}
        self.evicted: set[str] = set()
        self.recovery: dict = {}
        self._restored: set[str] = set()  # in memory, an evicted file still on disk
        self._dirty = False
        self._tasks: list[asyncio.Task] = []

    # ------------------------------------------------------------------ start, stop, recovery

    def load(self) -> list[str]:
        """Read the state folder (before serving); returns one report line per stream and what it was."""
        if self.state_dir is None:
            return []
        records, header = self.state_dir.read_state()
        for sid in self.state_dir.evicted_ids():
            rec = self.state_dir.read_evicted(sid)
            if sid in records and records[sid]["answered"] > rec["answered"]:
                self._restored.add(sid)  # the file is older than the snapshot: removed at the next one
            else:
                records.pop(sid, None)
                self.evicted.add(sid)
                self.recovery[sid] = rec["answered"]
        for sid, rec in records.items():
            self.streams[sid] = Stream.from_record(sid, rec)
            self.recovery[sid] = rec["answered"]
        self._update_gauges()
        if not self.recovery:
            return []
        how = "a graceful stop" if header.get("clean") else "the last snapshot (the server did not stop cleanly)"
        lines = [f"Continuing {len(self.recovery)} stream(s) from {self.state_dir.path} ({how}):"]
        for sid, n in sorted(self.recovery.items()):
            lines.append(f"stream {sid}: next frame seq {n}{' (evicted)' if sid in self.evicted else ''}")
        self.recovery = {
            "clean": bool(header.get("clean")),
            "written": header.get("written"),
            "streams": dict(self.recovery),
        }
        return lines

    async def start(self) -> None:
        """Start the batching, snapshot and eviction tasks (in the running loop)."""
        self._tasks = [asyncio.create_task(self.batcher.run(), name="serve-batcher")]
        if self.state_dir is not None and self.limits.snapshot_interval > 0:
            self._tasks.append(asyncio.create_task(self._snapshot_loop(), name="serve-snapshots"))
        if self.state_dir is not None and self.limits.idle_evict > 0:
            self._tasks.append(asyncio.create_task(self._evict_loop(), name="serve-eviction"))

    def drain(self) -> None:
        """The server is stopping: run waiting frames at once, without waiting for others to join."""
        self.batcher.drain()

    async def stop(self) -> None:
        """Answer every frame accepted, stop the tasks, write every stream (clean) to the state folder."""
        self.batcher.close()
        batcher, *others = self._tasks
        await batcher
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        self.batcher.shutdown()
        if self.state_dir is not None:
            self._write_snapshot(clean=True)
            logger.info(
                "Wrote %d stream(s) to %s (%d evicted there).",
                len(self.streams),
                self.state_dir.state_file,
                len(self.evicted),
            )
            self.state_dir.close()

    def _write_snapshot(self, *, clean: bool) -> None:
        taken = time.time()
        records = {sid: s.record() for sid, s in self.streams.items()}
        self.state_dir.write_state(records, clean=clean)
        self._dirty = False
        self.metrics.last_snapshot = taken
        self.metrics.snapshots.inc()
        for sid in list(self._restored):  # their snapshot record is newer than the evicted file
            if sid in records and sid in self.streams:
                self.state_dir.remove_evicted(sid)
                self._restored.discard(sid)

    async def _snapshot_loop(self) -> None:
        while True:
            await asyncio.sleep(self.limits.snapshot_interval)
            if not self._dirty:
                self.metrics.last_snapshot = time.time()  # the folder already holds every answered frame
                continue
            taken = time.time()
            records = {sid: s.record() for sid, s in self.streams.items()}  # consistent: commits run in this loop
            self._dirty = False
            try:
                await asyncio.to_thread(self.state_dir.write_state, records, clean=False)
            except OSError as exc:
                self._dirty = True
                logger.error("Snapshot to %s failed: %s", self.state_dir.state_file, exc)
                continue
            self.metrics.last_snapshot = taken
            self.metrics.snapshots.inc()
            for sid in list(self._restored):
                if sid in records and sid in self.streams:
                    self.state_dir.remove_evicted(sid)
                    self._restored.discard(sid)

    async def _evict_loop(self) -> None:
        idle = self.limits.idle_evict
        while True:
            await asyncio.sleep(min(1.0, idle / 4))
            now = time.monotonic()
            for s in list(self.streams.values()):
                if now - s.last_active > idle and not s.inflight and not self.batcher.waiting(s.id):
                    try:
                        self.state_dir.write_evicted(s)
                    except OSError as exc:
                        logger.error("Evicting stream %s failed (kept in memory): %s", s.id, exc)
                        continue
                    del self.streams[s.id]
                    self._restored.discard(s.id)
                    self.evicted.add(s.id)
                    self.metrics.evictions.inc()
            self._update_gauges()

    def _changed(self) -> None:
        self._dirty = True

    def _update_gauges(self) -> None:
        self.metrics.active.set(len(self.streams))
        self.metrics.evicted.set(len(self.evicted))

    # ------------------------------------------------------------------ the API's operations

    def create(self, frequency: float | None) -> Stream:
        """A new stream at the start of its sequence (zero state)."""
        if len(self.streams) + len(self.evicted) >= self.limits.max_streams:
            raise ApiError(
                429,
                f"Too many streams: this server holds {self.limits.max_streams} (--max-streams); "
                f"delete finished streams or retry later.",
                headers={"Retry-After": "5"},
            )
        index = None
        if self.model.is_signal:
            if frequency is None:
                raise ApiError(400, f"Field 'frequency' is required: one of {self.model.frequencies} (Hz).")
            try:
                index = self.model.frequency_index(frequency)
            except ValueError as exc:
                raise ApiError(400, str(exc)) from None
        elif frequency is not None:
            raise ApiError(400, "This model takes feature vectors, not a frequency: create the stream with {}.")
        sid = secrets.token_hex(8)
        h, c = self.model.zero_state()
        stream = self.streams[sid] = Stream(sid, index, None if index is None else float(frequency), h, c)
        self._dirty = True
        self._update_gauges()
        return stream

    def lookup(self, stream_id: str) -> Stream:
        """The stream, read back from the state folder if it was evicted; 404 if unknown."""
        s = self.streams.get(stream_id)
        if s is not None:
            return s
        if stream_id in self.evicted:
            s = self.streams[stream_id] = Stream.from_record(stream_id, self.state_dir.read_evicted(stream_id))
            self.evicted.discard(stream_id)
            self._restored.add(stream_id)
            self.metrics.restores.inc()
            self._update_gauges()
            return s
        raise ApiError(404, f"No stream {stream_id!r} on this server (deleted, or never created here).")

    def require(self, stream_id: str) -> None:
        """Raise 404 unless the stream is known (in memory or evicted); reads nothing."""
        if stream_id not in self.streams and stream_id not in self.evicted:
            raise ApiError(404, f"No stream {stream_id!r} on this server (deleted, or never created here).")

    def info(self, stream_id: str) -> dict:
        """What ``GET /v1/streams/{id}`` answers (an evicted stream stays on disk)."""
        if stream_id in self.evicted:
            rec = self.state_dir.read_evicted(stream_id)
            return {"stream": stream_id, "frequency": rec["frequency"], "next_seq": rec["answered"], "evicted": True}
        s = self.lookup(stream_id)
        return {"stream": s.id, "frequency": s.frequency, "next_seq": s.accepted, "evicted": False}

    def delete(self, stream_id: str) -> None:
        """Forget a stream (its frames in flight are still answered)."""
        s = self.streams.pop(stream_id, None)
        if s is None and stream_id not in self.evicted:
            raise ApiError(404, f"No stream {stream_id!r} on this server (deleted, or never created here).")
        if s is not None:
            s.deleted = True
        self.evicted.discard(stream_id)
        self._restored.discard(stream_id)
        if self.state_dir is not None:
            self.state_dir.remove_evicted(stream_id)
        self._dirty = True
        self._update_gauges()

    def submit(self, stream_id: str, seq: int, samples: np.ndarray) -> asyncio.Future:
        """Accept one frame; returns the future of its answer (the JSON bytes ``{"seq": k, "y": [...]}``).

        Raises:
            ApiError: 404 unknown stream, 409 seq out of order or a retry with other samples,
                429 queue full.
        """
        if not STREAM_ID.match(stream_id):
            raise ApiError(404, f"No stream {stream_id!r} on this server (ids are 16 hexadecimal digits).")
        s = self.lookup(stream_id)
        digest = hashlib.blake2b(samples.tobytes(), digest_size=8).hexdigest()
        loop = asyncio.get_running_loop()
        if seq < s.accepted:
            kept = s.answers.get(seq) or s.inflight.get(seq)
            if kept is None:
                raise ApiError(
                    409,
                    f"Frame seq {seq} of stream {stream_id} was answered before and its answer is "
                    f"no longer kept (the last {self.limits.keep_answers} are); the next seq is "
                    f"{s.accepted}.",
                    next_seq=s.accepted,
                )
            if kept[0] != digest:
                raise ApiError(
                    409,
                    f"Frame seq {seq} of stream {stream_id} was already taken with other samples; "
                    f"a retry must repeat the frame as sent; the next seq is {s.accepted}.",
                    next_seq=s.accepted,
                )
            self.metrics.retries.inc()
            if isinstance(kept[1], bytes):
                future = loop.create_future()
                future.set_result(kept[1])
                return future
            return kept[1]
        if seq > s.accepted:
            raise ApiError(
                409,
                f"Frame seq {seq} of stream {stream_id} is ahead of the stream: the next seq is {s.accepted}.",
                next_seq=s.accepted,
            )
        if self.batcher.queued >= self.limits.max_queue:
            raise ApiError(
                429,
                f"Too many frames waiting ({self.batcher.queued}, --max-queue "
                f"{self.limits.max_queue}); retry the frame later.",
                headers={"Retry-After": "1"},
            )
        future = loop.create_future()
        frame = Frame(s, seq, samples, digest, future)
        s.accepted += 1
        s.inflight[seq] = (digest, future)
        s.last_active = frame.arrival
        if self.limits.naive:  # the baseline: this frame alone, computed here and now
            self.batcher.run_now(frame)
        else:
            self.batcher.put(frame)
        return future
