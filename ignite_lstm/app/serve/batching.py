"""One batched model call for the frames of many streams: ``run_lanes``.

Each stream waiting with frames is one *lane*: its frames' samples (in seq order, so
consecutive frames of one stream run in one call) and its state. The lanes are sorted by
length, longest first, and stepped together one sample at a time on the lanes that still
have samples: at step t the active lanes are a prefix of the batch, so a lane that is done
keeps its final state and no padding ever enters a state. The steps between two lane ends
(all of them when the frames have one size) are one ``ServedModel.steps`` call: for a
``StatefulLSTM`` the native kernel's own loop over those steps, whose numbers are those of
the per-step ``model.step`` calls bit for bit (tested); the server's worker thread then
takes the GIL back once per call, not once per sample, while the event loop is busy.

Independence of the batch: a lane's numbers do not depend on which lanes share the call
when the step computes each row alone. The native kernel does (each row's products are
accumulated in the same order whatever the batch; ``tests/app/test_serve_api.py`` checks
bit equality with ``extract``); torch's fallback (``torch.lstm_cell``, a BLAS product) and
onnxruntime may block rows differently per batch size, within float32 rounding (the tests
bound the difference from ``extract`` by 1e-6).
"""

from __future__ import annotations

import json
import time

try:
    import orjson  # the same doubles, written about twenty times faster than json
except ImportError:  # pragma: no cover - the serve extra installs it
    orjson = None
from dataclasses import dataclass, field

import numpy as np

from ignite_lstm.app.serve.model import ServedModel

__all__ = ["Frame", "Lane", "run_lanes"]


@dataclass(eq=False)
class Frame:
    """One accepted frame: its stream, seq, samples (n,) or (n, F) float32, and the future of its answer."""

    stream: object
    seq: int
    samples: np.ndarray
    digest: str
    future: object
    arrival: float = field(default_factory=time.monotonic)


@dataclass(eq=False)
class Lane:
    """The frames of one stream taken into a batch (consecutive seqs)."""

    stream: object
    frames: list


def _body(seq: int, y: np.ndarray, signal: bool) -> bytes:
    values = y[:, 0].tolist() if signal else y.tolist()  # float32 -> exact doubles -> shortest repr
    text = orjson.dumps(values) if orjson is not None else json.dumps(values, separators=(",", ":")).encode()
    return b'{"seq":%d,"y":%s}' % (seq, text)


def run_lanes(model: ServedModel, lanes: list[Lane]) -> tuple[list, dict]:
    """Step all lanes from their streams' states through all their frames; encode the answers.

    Args:
        model: the served model.
        lanes: one per stream, each with its frames in seq order.

    Returns:
        ``(results, stats)``: per lane ``(h, c, bodies)``, h and c (L, 1, H) the state after its
        last frame and ``bodies`` the JSON answer of each frame; ``stats``: the model calls made,
        the time steps and the rows (lane-steps) they computed.
    """
    samples = []
    for lane in lanes:
        parts = [f.samples for f in lane.frames]
        samples.append(parts[0] if len(parts) == 1 else np.concatenate(parts))
    order = sorted(range(len(lanes)), key=lambda i: -len(samples[i]))  # longest first: active lanes = a prefix
    lengths = [len(samples[i]) for i in order]
    B, T = len(lanes), lengths[0]
    x = model.batch_inputs([samples[i] for i in order], [lanes[i].stream.freq_index for i in order])  # (T, B, F)
    h = np.concatenate([lanes[i].stream.h for i in order], axis=1)  # (L, B, H)
    c = np.concatenate([lanes[i].stream.c for i in order], axis=1)
    y = np.zeros((T, B, model.output_size), np.float32)
    active, t, calls, rows = B, 0, 0, 0
    while t < T:  # segments of constant width: the active lanes, a prefix, until the shortest of them ends
        while lengths[active - 1] <= t:
            active -= 1
        end = lengths[active - 1]
        y[t:end, :active], h_next, c_next = model.steps(x[t:end, :active], h[:, :active], c[:, :active])
        if active == B:
            h, c = h_next, c_next
        else:  # the finished lanes keep their state (h is this call's own array)
            h[:, :active], c[:, :active] = h_next, c_next
        calls, rows, t = calls + 1, rows + active * (end - t), end
    results: list = [None] * B
    signal = model.is_signal
    for j, i in enumerate(order):
        bodies, start = [], 0
        for frame in lanes[i].frames:
            n = len(frame.samples)
            bodies.append(_body(frame.seq, y[start : start + n, j], signal))
            start += n
        results[i] = (h[:, j : j + 1].copy(), c[:, j : j + 1].copy(), bodies)
    return results, {"calls": calls, "steps": T, "rows": rows}
