"""The server's Prometheus metrics (prometheus-client), in a registry of their own per server.

``GET /metrics`` answers them in Prometheus' text format. Names start with ``ignite_lstm_serve_``.
"""

from __future__ import annotations

import time

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "ServeMetrics"]

disable_created_metrics()  # no *_created series: they double the output and say nothing here

_LATENCY = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
_LANES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class ServeMetrics:
    """The counters, gauges and histograms of one server."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        p = "ignite_lstm_serve_"
        self.frames = Counter(p + "frames", "Frames answered (retries not counted)", registry=r)
        self.samples = Counter(p + "samples", "Samples stepped", registry=r)
        self.retries = Counter(p + "retried_frames", "Frames answered again from the kept answers", registry=r)
        self.rejected = Counter(p + "rejected_requests", "Requests refused, by status code", ["code"], registry=r)
        self.batch_lanes = Histogram(
            p + "step_batch_lanes", "Streams (lanes) in one batched model call", buckets=_LANES, registry=r
        )
        self.model_calls = Counter(p + "model_calls", "Model calls (each over one or more time steps)", registry=r)
        self.steps = Counter(p + "steps", "Time steps stepped (each over the lanes active then)", registry=r)
        self.step_rows = Counter(
            p + "step_rows", "Rows stepped: the sum of the step-batch sizes over the steps", registry=r
        )
        self.queue_seconds = Histogram(
            p + "queue_seconds", "From a frame's arrival to the start of its model call", buckets=_LATENCY, registry=r
        )
        self.compute_seconds = Histogram(
            p + "compute_seconds", "Duration of one batched model call", buckets=_LATENCY, registry=r
        )
        self.queued = Gauge(p + "queued_frames", "Frames accepted and waiting for their model call", registry=r)
        self.active = Gauge(p + "active_streams", "Streams held in memory", registry=r)
        self.evicted = Gauge(p + "evicted_streams", "Streams written out to the state folder", registry=r)
        self.evictions = Counter(p + "evictions", "Idle streams written out of memory", registry=r)
        self.restores = Counter(p + "restores", "Evicted streams read back at their next frame", registry=r)
        self.snapshots = Counter(p + "snapshots", "Snapshots of all streams written", registry=r)
        self.last_snapshot = time.time()
        self.snapshot_age = Gauge(
            p + "snapshot_age_seconds", "Seconds since the state folder last held every answered frame", registry=r
        )
        self.snapshot_age.set_function(lambda: time.time() - self.last_snapshot)

    def text(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
