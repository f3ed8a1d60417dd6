"""The batching task: the frames of every stream waiting, one ``run_lanes`` call, under a latency deadline.

Frames wait per stream, in arrival order of each stream's first waiting frame. A call starts
when ``max_batch`` frames wait or ``max_wait`` after the oldest waiting frame arrived,
whichever is first (at once while the server drains); it takes up to ``max_batch`` streams,
each with all its waiting frames, and runs in a worker thread, so the event loop keeps
reading frames meanwhile; those wait for the next call, so under load calls grow by
themselves. The answers are committed in the event loop: the stream's state, its kept
answers, the futures of its frames.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ignite_lstm.app.serve.batching import Frame, Lane, run_lanes
from ignite_lstm.app.serve.errors import ApiError
from ignite_lstm.app.serve.metrics import ServeMetrics
from ignite_lstm.app.serve.model import ServedModel

__all__ = ["Batcher"]

logger = logging.getLogger("ignite_lstm.serve")


class Batcher:
    """Frames in (``put``), batched model calls, answers committed.

    Args:
        model: the served model.
        max_batch: streams (lanes) per call; also the number of waiting frames that starts a call.
        max_wait: seconds from the oldest waiting frame's arrival to the start of its call.
        keep_answers: answers kept per stream for retries.
        metrics: where the calls are counted.
        on_commit: called after each commit (the service marks its state changed).
    """

    def __init__(
        self,
        model: ServedModel,
        *,
        max_batch: int,
        max_wait: float,
        keep_answers: int,
        metrics: ServeMetrics,
        on_commit: Callable[[], None],
    ) -> None:
        self.model, self.max_batch, self.max_wait, self.keep = model, max_batch, max_wait, keep_answers
        self.metrics, self.on_commit = metrics, on_commit
        self.queued = 0  # frames accepted, not yet in a call
        self._pending: dict[str, list[Frame]] = {}
        self._draining = self._closing = False
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="serve-step")
        self._wake = self._full = None

    def waiting(self, stream_id: str) -> bool:
        """True while the stream has frames waiting for a call."""
        return stream_id in self._pending

    def put(self, frame: Frame) -> None:
        """Queue an accepted frame for the next call."""
        pending = self._pending.get(frame.stream.id)
        if pending is None:
            self._pending[frame.stream.id] = [frame]
        else:
            pending.append(frame)
        self.queued += 1
        self._wake.set()
        if self.queued >= self.max_batch:
            self._full.set()

    def run_now(self, frame: Frame) -> None:
        """The naive design: this frame alone, one model call, here in the event loop."""
        self.metrics.queue_seconds.observe(0.0)
        start = time.monotonic()
        lanes = [Lane(frame.stream, [frame])]
        results, stats = run_lanes(self.model, lanes)
        self._commit(lanes, results, stats, time.monotonic() - start)

    def drain(self) -> None:
        """The server is stopping: run waiting frames at once, without waiting for others to join."""
        self._draining = True
        if self._full is not None:
            self._full.set()

    async def run(self) -> None:
        """The batching task; returns after ``close()`` once no frame waits."""
        self._wake, self._full = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            oldest = next(iter(self._pending.values()))[0].arrival
            delay = oldest + self.max_wait - time.monotonic()
            if delay > 0 and self.queued < self.max_batch and not self._draining:
                self._full.clear()  # set by put() when max_batch frames wait, and by drain()
                try:
                    await asyncio.wait_for(self._full.wait(), delay)
                except TimeoutError:
                    pass
            lanes = self._take()
            start = time.monotonic()
            for lane in lanes:
                for frame in lane.frames:
                    self.metrics.queue_seconds.observe(start - frame.arrival)
            try:
                results, stats = await loop.run_in_executor(self._executor, run_lanes, self.model, lanes)
            except Exception as exc:  # a bug, not bad input: the frames are refused, the states unchanged
                logger.exception("A batched model call failed")
                self._fail(lanes, exc)
                continue
            self._commit(lanes, results, stats, time.monotonic() - start)

    def close(self) -> None:
        """Let ``run`` return once every waiting frame is answered."""
        self._closing = True
        self.drain()
        if self._wake is not None:
            self._wake.set()

    def shutdown(self) -> None:
        """Stop the worker thread (after ``run`` returned)."""
        self._executor.shutdown()

    def _take(self) -> list[Lane]:
        room = self.max_batch
        if len(self._pending) <= room:
            items, self._pending = list(self._pending.values()), {}
        else:
            keys = [k for k, _ in zip(self._pending, range(room))]
            items = [self._pending.pop(k) for k in keys]
        self.queued -= sum(len(frames) for frames in items)
        return [Lane(frames[0].stream, frames) for frames in items]

    def _commit(self, lanes: list[Lane], results: list, stats: dict, seconds: float) -> None:
        now, samples, frames = time.monotonic(), 0, 0
        for lane, (h, c, bodies) in zip(lanes, results):
            s = lane.stream
            s.h, s.c = h, c
            for frame, body in zip(lane.frames, bodies):
                s.answers[frame.seq] = (frame.digest, body)
                s.inflight.pop(frame.seq, None)
                if not frame.future.done():
                    frame.future.set_result(body)
                samples += len(frame.samples)
            frames += len(lane.frames)
            while len(s.answers) > self.keep:
                s.answers.popitem(last=False)
            s.answered = lane.frames[-1].seq + 1
            s.last_active = now
        self.on_commit()
        m = self.metrics
        m.frames.inc(frames)
        m.samples.inc(samples)
        m.batch_lanes.observe(len(lanes))
        m.model_calls.inc(stats["calls"])
        m.steps.inc(stats["steps"])
        m.step_rows.inc(stats["rows"])
        m.compute_seconds.observe(seconds)

    def _fail(self, lanes: list[Lane], exc: Exception) -> None:
        for lane in lanes:
            s = lane.stream
            s.accepted = min(s.accepted, lane.frames[0].seq)
            for frame in lane.frames:
                s.inflight.pop(frame.seq, None)
                if not frame.future.done():
                    frame.future.set_exception(ApiError(500, f"The model call failed: {exc}"))
