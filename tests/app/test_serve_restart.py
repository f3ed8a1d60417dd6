"""Stops and restarts of a real server process: SIGTERM mid-way (the issue's 'done when'), SIGKILL.

The server is ``python -m ignite_lstm.app.serve`` in a subprocess on 127.0.0.1; the outputs of
every stream, across the restart, are compared with offline ``extract`` on the same samples.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time

import httpx
import numpy as np
import pytest
from serve_helpers import (
    ServerProcess,
    mixture,
    offline,
    split_frames,
    train_tiny_model,
)

from ignite_lstm.app.serve.model import load_served_model
from ignite_lstm.app.serve.streams import StateDir, StateError
from ignite_lstm.models import native

FREQS6 = [1.0, 3.0, 5.0, 7.0, 3.0, 7.0]
SIZES6 = [[7, 13], [1, 19, 3], [11], [5, 2, 17], [29, 9], [3, 23]]
FRAMES = 16


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return train_tiny_model(tmp_path_factory.mktemp("serve-model"))


def _assert_matches(y, ref):
    y = np.asarray(y, np.float32)
    if native.available():
        np.testing.assert_array_equal(y, ref)
    else:
        np.testing.assert_allclose(y, ref, rtol=0, atol=1e-6)


def _metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics").text
    return float(re.search(rf"^{name} (\S+)$", text, re.MULTILINE).group(1))


async def _send(url: str, jobs: list[tuple[str, int, list]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def one(sid, seqs, frames):
            return [await client.post(f"/v1/streams/{sid}/frames", json={"seq": k, "x": frames[k]}) for k in seqs]

        return await asyncio.gather(*(one(*job) for job in jobs))


def test_sigterm_midway_then_restart_continues_every_stream_exactly(model_file, tmp_path):
    signals = [mixture(FRAMES * max(z), seed=i + 1) for i, z in enumerate(SIZES6)]
    frames = [split_frames(signals[i], SIZES6[i])[:FRAMES] for i in range(6)]
    state = tmp_path / "state"
    # max-batch 6 and a 60 s deadline: a call runs when all six streams wait, or at the stop
    server = ServerProcess(
        [model_file, "--state-dir", state, "--max-batch", "6", "--max-wait-ms", "60000"], tmp_path / "first.log"
    )
    try:
        ids = [httpx.post(server.url + "/v1/streams", json={"frequency": f}).json()["stream"] for f in FREQS6]
        first = asyncio.run(_send(server.url, [(ids[i], range(8), frames[i]) for i in range(6)]))
        # frame 8 of five streams: it waits for a sixth, in flight when SIGTERM comes
        held = asyncio.run(_wait_then_signal(server, [(ids[i], [8], frames[i]) for i in range(5)]))
        assert server.wait() == 0
    finally:
        server.stop_now()
    assert all(r.status_code == 200 for rs in first + held for r in rs)
    assert "Stopped; 6 stream(s) kept" in server.text()

    server = ServerProcess([model_file, "--state-dir", state], tmp_path / "second.log")
    try:
        report = server.text()
        assert "Continuing 6 stream(s)" in report and "(a graceful stop)" in report
        for i, sid in enumerate(ids):
            assert f"stream {sid}: next frame seq {9 if i < 5 else 8}" in report
        listed = {s["stream"]: s["next_seq"] for s in httpx.get(server.url + "/v1/streams").json()["streams"]}
        assert listed == {sid: 9 if i < 5 else 8 for i, sid in enumerate(ids)}
        retried = httpx.post(server.url + f"/v1/streams/{ids[0]}/frames", json={"seq": 8, "x": frames[0][8]})
        assert retried.status_code == 200 and retried.content == held[0][0].content  # the same answer
        rest = asyncio.run(_send(server.url, [(ids[i], range(9 if i < 5 else 8, FRAMES), frames[i]) for i in range(6)]))
        server.proc.send_signal(signal.SIGINT)
        assert server.wait() == 0
    finally:
        server.stop_now()
    for i in range(6):
        answers = first[i] + (held[i] if i < 5 else []) + rest[i]
        assert [r.json()["seq"] for r in answers] == list(range(FRAMES))
        n = sum(len(x) for x in frames[i])
        _assert_matches([v for r in answers for v in r.json()["y"]], offline(model_file, signals[i][:n], FREQS6[i]))


async def _wait_then_signal(server: ServerProcess, jobs):
    task = asyncio.ensure_future(_send(server.url, jobs))
    deadline = time.monotonic() + 30
    while _metric(server.url, "ignite_lstm_serve_queued_frames") < len(jobs):
        assert time.monotonic() < deadline and not task.done()
        await asyncio.sleep(0.02)
    server.proc.send_signal(signal.SIGTERM)
    return await task


def test_sigkill_then_restart_from_the_last_snapshot_says_which_frame_comes_next(model_file, tmp_path):
    signal_a, signal_b = mixture(120, seed=1), mixture(120, seed=2)
    frames = {"a": split_frames(signal_a, [13, 7]), "b": split_frames(signal_b, [5])}
    state = tmp_path / "state"
    server = ServerProcess([model_file, "--state-dir", state, "--snapshot-interval", "0.2"], tmp_path / "first.log")
    try:
        ids = {
            k: httpx.post(server.url + "/v1/streams", json={"frequency": f}).json()["stream"]
            for k, f in (("a", 5.0), ("b", 1.0))
        }
        answers = {
            k: [
                httpx.post(server.url + f"/v1/streams/{ids[k]}/frames", json={"seq": s, "x": frames[k][s]})
                for s in range(3)
            ]
            for k in ids
        }
        deadline = time.monotonic() + 20
        while not _snapshot_holds(state, ids.values(), 3):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(StateError, match=rf"is in use by another server \(pid {server.proc.pid}\)"):
            StateDir(state, load_served_model(model_file).fingerprint)  # one server per folder
        answers["a"].append(
            httpx.post(server.url + f"/v1/streams/{ids['a']}/frames", json={"seq": 3, "x": frames["a"][3]})
        )  # in a snapshot or not: the report says
        server.proc.kill()
        assert server.wait() == -signal.SIGKILL
    finally:
        server.stop_now()

    server = ServerProcess([model_file, "--state-dir", state], tmp_path / "second.log")
    try:
        report = server.text()
        assert "(the last snapshot (the server did not stop cleanly))" in report
        nexts = {k: int(re.search(rf"stream {ids[k]}: next frame seq (\d+)", report).group(1)) for k in ids}
        assert nexts["b"] == 3 and nexts["a"] in (3, 4)
        for k in ids:  # the client resends from the frame the server names
            answers[k] = answers[k][: nexts[k]] + [
                httpx.post(server.url + f"/v1/streams/{ids[k]}/frames", json={"seq": s, "x": frames[k][s]})
                for s in range(nexts[k], len(frames[k]))
            ]
        server.proc.send_signal(signal.SIGTERM)
        assert server.wait() == 0
    finally:
        server.stop_now()
    for k, sig, f in (("a", signal_a, 5.0), ("b", signal_b, 1.0)):
        assert [r.status_code for r in answers[k]] == [200] * len(frames[k])
        _assert_matches([v for r in answers[k] for v in r.json()["y"]], offline(model_file, sig, f))


def _snapshot_holds(state, ids, answered: int) -> bool:
    try:
        streams = json.loads((state / "state.json").read_text())["streams"]
    except (OSError, ValueError):
        return False
    return all(sid in streams and streams[sid]["answered"] == answered for sid in ids)
