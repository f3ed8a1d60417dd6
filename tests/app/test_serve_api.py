"""The serving API against real servers (uvicorn on 127.0.0.1, in a thread) with a tiny trained model.

Every answer is compared with offline ``extract`` (``stream_extract`` on the same samples);
with the native kernel, whose rows are computed alone, the comparison is bit for bit,
otherwise within 1e-6.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time

import httpx
import numpy as np
import pytest
import websockets
from serve_helpers import (
    FREQS,
    mixture,
    offline,
    server_in_thread,
    split_frames,
    train_tiny_model,
)
from websockets.sync.client import connect

from ignite_lstm.app.serve.batching import Frame, Lane, run_lanes
from ignite_lstm.app.serve.model import load_served_model
from ignite_lstm.app.serve.streams import Stream
from ignite_lstm.models import native

EXACT = native.available()  # the native kernel computes each row alone: bit equality


def assert_matches(y, ref):
    y = np.asarray(y, np.float32)
    assert y.shape == ref.shape
    if EXACT:
        np.testing.assert_array_equal(y, ref)
    else:
        np.testing.assert_allclose(y, ref, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return train_tiny_model(tmp_path_factory.mktemp("serve-model"))


@pytest.fixture(scope="module")
def server(model_file):
    with server_in_thread(model_file, max_frame_samples=64, keep_answers=4) as (url, service):
        yield url, service


def _create(client, frequency=3.0):
    r = client.post("/v1/streams", json={"frequency": frequency})
    assert r.status_code == 201, r.text
    return r.json()["stream"]


def _post(client, sid, seq, x):
    return client.post(f"/v1/streams/{sid}/frames", json={"seq": seq, "x": x})


# ---------------------------------------------------------------- the batched step


class _StepOnly:
    """The model with only ``step`` (as an ONNX step or a user's model): the server's per-step path."""

    def __init__(self, model):
        self.model, self.config = model, model.config

    def step(self, x_t, state):
        return self.model.step(x_t, state)


@pytest.mark.parametrize("sequence", [True, False], ids=["sequence-calls", "step-calls"])
def test_run_lanes_output_does_not_depend_on_the_batch(model_file, sequence):
    """Six streams of different lengths, alone, all together, then in other company and order: same numbers."""
    model = load_served_model(model_file)
    if not sequence:
        model.stepper = _StepOnly(model.stepper)
    lengths, freqs = [37, 5, 61, 1, 23, 61], [1.0, 3.0, 5.0, 7.0, 3.0, 7.0]
    signals = [mixture(n, seed=i + 1) for i, n in enumerate(lengths)]

    def stream(i):
        h, c = model.zero_state()
        return Stream(f"{i:016x}", FREQS.index(freqs[i]), freqs[i], h, c)

    def lane(s, samples, seq=0):
        return Lane(s, [Frame(s, seq, samples, "", None)])

    def outputs(results):
        return [np.asarray(json.loads(b)["y"], np.float32) for _, _, bodies in results for b in bodies]

    refs = [offline(model_file, signals[i], freqs[i]) for i in range(6)]
    alone = [outputs(run_lanes(model, [lane(stream(i), signals[i])])[0])[0] for i in range(6)]
    together, stats = run_lanes(model, [lane(stream(i), signals[i]) for i in range(6)])
    assert stats == {"calls": 5, "steps": 61, "rows": sum(lengths)}  # segments ending at 1, 5, 23, 37, 61
    for i in range(6):
        assert_matches(alone[i], refs[i])
        assert_matches(outputs([together[i]])[0], refs[i])
    # a stream continued from its state in a batch of other streams, in another order
    s = stream(2)
    first, _ = run_lanes(model, [lane(stream(1), signals[1]), lane(s, signals[2][:30])])
    s.h, s.c = first[1][0], first[1][1]
    second, _ = run_lanes(
        model, [lane(stream(3), signals[3]), lane(s, signals[2][30:], 1), lane(stream(0), signals[0])]
    )
    assert_matches(np.concatenate([outputs([first[1]])[0], outputs([second[1]])[0]]), refs[2])


# ---------------------------------------------------------------- frames over HTTP


def test_six_streams_over_http_equal_offline_extract_in_batches_of_six(model_file):
    """Six concurrent streams with frames of odd sizes; max_batch 6 makes every model call hold all six."""
    sizes = [[7, 13], [1, 19, 3], [11], [5, 2, 17], [20, 9], [3]]
    freqs = [1.0, 3.0, 5.0, 7.0, 5.0, 1.0]
    signals = [mixture(12 * max(z), seed=i + 1) for i, z in enumerate(sizes)]
    frames = [split_frames(signals[i], sizes[i])[:12] for i in range(6)]  # 12 frames each: six per call
    with server_in_thread(model_file, max_batch=6, max_wait=60.0) as (url, service):

        async def one(client, i):
            sid = (await client.post("/v1/streams", json={"frequency": freqs[i]})).json()["stream"]
            ys = []
            for k, x in enumerate(frames[i]):
                r = await client.post(f"/v1/streams/{sid}/frames", json={"seq": k, "x": x})
                assert r.status_code == 200, r.text
                assert r.json()["seq"] == k
                ys += r.json()["y"]
            return ys

        async def all_streams():
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                return await asyncio.gather(*(one(client, i) for i in range(6)))

        outputs = asyncio.run(all_streams())
        lanes = service.metrics.batch_lanes
        assert lanes._sum.get() == 6 * 12 and sum(b.get() for b in lanes._buckets) == 12  # 12 calls of 6
    for i in range(6):
        n = sum(len(x) for x in frames[i])
        assert_matches(outputs[i], offline(model_file, signals[i][:n], freqs[i]))


def test_retried_frame_gets_the_same_answer_and_steps_once(server, model_file):
    url, service = server
    signal = mixture(40, seed=3)
    frames = split_frames(signal, [9, 4, 11])
    with httpx.Client(base_url=url) as client:
        sid = _create(client, 5.0)
        answers = [_post(client, sid, k, frames[k]) for k in range(3)]
        before = service.metrics.retries._value.get()
        again = _post(client, sid, 2, frames[2])
        assert again.status_code == 200 and again.content == answers[2].content
        assert _post(client, sid, 1, frames[1]).content == answers[1].content
        assert service.metrics.retries._value.get() == before + 2
        rest = [_post(client, sid, k, frames[k]) for k in range(3, len(frames))]
        y = [v for r in answers + rest for v in r.json()["y"]]
        assert_matches(y, offline(model_file, signal, 5.0))  # the retries stepped nothing
        r = _post(client, sid, 0, frames[0])  # 6 frames later: no longer kept (keep_answers 4)
        assert r.status_code == 409 and "no longer kept" in r.json()["error"] and r.json()["next_seq"] == len(frames)


def test_409_for_a_seq_ahead_and_for_a_retry_with_other_samples(server):
    url, _ = server
    with httpx.Client(base_url=url) as client:
        sid = _create(client)
        assert _post(client, sid, 0, [0.1, 0.2]).status_code == 200
        r = _post(client, sid, 2, [0.3])
        assert r.status_code == 409 and r.json()["next_seq"] == 1 and "ahead" in r.json()["error"]
        r = _post(client, sid, 0, [0.1, 0.25])
        assert r.status_code == 409 and "other samples" in r.json()["error"]
        assert _post(client, sid, 1, [0.3]).status_code == 200


def test_404_for_unknown_streams_and_204_for_delete(server):
    url, _ = server
    with httpx.Client(base_url=url) as client:
        sid = _create(client)
        assert client.get(f"/v1/streams/{sid}").json() == {
            "stream": sid,
            "frequency": 3.0,
            "next_seq": 0,
            "evicted": False,
        }
        r = client.delete(f"/v1/streams/{sid}")
        assert r.status_code == 204 and r.content == b""
        for r in (
            _post(client, sid, 0, [0.1]),
            client.get(f"/v1/streams/{sid}"),
            client.delete(f"/v1/streams/{sid}"),
            _post(client, "not-an-id", 0, [0.1]),
        ):
            assert r.status_code == 404 and "No stream" in r.json()["error"]
    with pytest.raises(websockets.InvalidStatus, match="404"):
        connect(url.replace("http", "ws") + f"/v1/streams/{sid}/ws").close()


BAD_FRAMES = [
    (b"{bad", "not valid JSON"),
    (b"[1, 2]", "should be a JSON object"),
    (b'{"seq": 0}', "exactly the fields"),
    (b'{"seq": 0, "x": [1], "y": 2}', "exactly the fields"),
    (b'{"seq": -1, "x": [1]}', "'seq' should be an integer >= 0, got -1"),
    (b'{"seq": "0", "x": [1]}', "'seq' should be an integer >= 0, got '0'"),
    (b'{"seq": true, "x": [1]}', "'seq' should be an integer"),
    (b'{"seq": 0, "x": "0.5"}', "'x' should be a non-empty list"),
    (b'{"seq": 0, "x": []}', "'x' should be a non-empty list of samples, got list \\(empty\\)"),
    (b'{"seq": 0, "x": [0.5, "a"]}', "x\\[1\\] is 'a'"),
    (b'{"seq": 0, "x": [0.5, true]}', "x\\[1\\] is True"),
    (b'{"seq": 0, "x": [0.5, [1]]}', "x\\[1\\] is \\[1\\]"),
    (b'{"seq": 0, "x": [0.5, NaN, 1]}', "non-finite samples .* at index \\[1\\]"),
    (b'{"seq": 0, "x": [Infinity]}', "non-finite samples .* at index \\[0\\]"),
    (b'{"seq": 0, "x": [0, 1e39]}', "beyond float32\\) at index \\[1\\]"),
]


@pytest.mark.parametrize("body, message", BAD_FRAMES)
def test_400_for_a_bad_frame_names_the_problem(server, body, message):
    url, _ = server
    with httpx.Client(base_url=url) as client:
        sid = _create(client)
        r = client.post(f"/v1/streams/{sid}/frames", content=body)
        assert r.status_code == 400
        assert re.search(message, r.json()["error"]), r.json()["error"]
        assert _post(client, sid, 0, [0.5]).status_code == 200  # nothing was accepted


@pytest.mark.parametrize(
    "body, message",
    [
        ({"frequency": 2}, "Frequency 2 Hz is not one the model was trained for; allowed: 1, 3, 5, 7"),
        ({"frequency": "3"}, "'frequency' should be a number"),
        ({}, "'frequency' is required"),
        ({"freq": 3}, 'should be {"frequency": f}'),
    ],
)
def test_400_for_a_bad_stream(server, body, message):
    url, _ = server
    r = httpx.post(url + "/v1/streams", json=body)
    assert r.status_code == 400 and message in r.json()["error"]


def test_413_for_a_frame_over_the_limit(server):
    url, _ = server
    with httpx.Client(base_url=url) as client:
        sid = _create(client)
        r = _post(client, sid, 0, [0.0] * 65)  # --max-frame-samples 64
        assert r.status_code == 413 and "65 samples; the limit is 64" in r.json()["error"]
        r = client.post(f"/v1/streams/{sid}/frames", content=b" " * 10_000)
        assert r.status_code == 413 and "bytes" in r.json()["error"]
        assert _post(client, sid, 0, [0.0] * 64).status_code == 200


def test_401_without_the_token(model_file):
    with server_in_thread(model_file, token="s3cret") as (url, _):
        assert httpx.get(url + "/healthz").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = httpx.post(url + "/v1/streams", json={"frequency": 3}, headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert httpx.get(url + "/metrics", headers=headers).status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        sid = httpx.post(url + "/v1/streams", json={"frequency": 3}, headers=good).json()["stream"]
        assert httpx.post(url + f"/v1/streams/{sid}/frames", json={"seq": 0, "x": [1.0]}).status_code == 401
        ws = url.replace("http", "ws") + f"/v1/streams/{sid}/ws"
        with pytest.raises(websockets.InvalidStatus, match="401"):
            connect(ws).close()
        with connect(ws, additional_headers=good) as conn:
            conn.send(json.dumps({"seq": 0, "x": [1.0]}))
            assert json.loads(conn.recv())["seq"] == 0


def test_429_for_too_many_streams_and_a_full_queue_answers_in_flight_at_stop(model_file):
    with server_in_thread(model_file, max_streams=2, max_queue=1, max_wait=60.0) as (url, service):
        a, b = (httpx.post(url + "/v1/streams", json={"frequency": 3}).json()["stream"] for _ in range(2))
        r = httpx.post(url + "/v1/streams", json={"frequency": 3})
        assert r.status_code == 429 and r.headers["retry-after"] == "5" and "--max-streams" in r.json()["error"]
        held = {}
        first = threading.Thread(
            target=lambda: held.update(
                r=httpx.post(url + f"/v1/streams/{a}/frames", json={"seq": 0, "x": [0.5]}, timeout=60)
            )
        )
        first.start()
        deadline = time.monotonic() + 10
        while service.batcher.queued < 1 and time.monotonic() < deadline:  # a's frame waits for its call (60 s)
            time.sleep(0.01)
        r = httpx.post(url + f"/v1/streams/{b}/frames", json={"seq": 0, "x": [0.5]})
        assert r.status_code == 429 and r.headers["retry-after"] == "1" and "--max-queue 1" in r.json()["error"]
        assert not held  # still waiting: the stop below answers it
    first.join(30)
    assert held["r"].status_code == 200 and held["r"].json()["seq"] == 0


def test_websocket_frames_in_order_equal_offline_extract(server, model_file):
    url, _ = server
    signal = mixture(90, seed=4)
    frames = split_frames(signal, [13, 1, 6])
    sid = _create(httpx.Client(base_url=url), 7.0)
    with connect(url.replace("http", "ws") + f"/v1/streams/{sid}/ws") as conn:
        for k, x in enumerate(frames[:5]):  # pipelined: five frames out before any answer is read
            conn.send(json.dumps({"seq": k, "x": x}))
        conn.send(json.dumps({"seq": 9, "x": [0.0]}))  # out of order: an error in its place
        for k, x in enumerate(frames[5:], start=5):
            conn.send(json.dumps({"seq": k, "x": x}))
        last = len(frames) - 1  # a retry of the last frame: in flight or answered, kept either way
        conn.send(json.dumps({"seq": last, "x": frames[last]}))
        answers = [json.loads(conn.recv()) for _ in range(len(frames) + 2)]
    assert [a.get("seq") for a in answers] == [0, 1, 2, 3, 4, 9] + list(range(5, len(frames))) + [last]
    assert answers[5]["status"] == 409 and answers[5]["next_seq"] == 5
    assert answers[-1] == answers[-2]
    y = [v for a in answers[:5] + answers[6:-1] for v in a["y"]]
    assert_matches(y, offline(model_file, signal, 7.0))


def test_metrics_in_prometheus_text(server):
    url, _ = server
    with httpx.Client(base_url=url) as client:
        sid = _create(client)
        _post(client, sid, 0, [0.1, 0.2, 0.3])
        text = client.get("/metrics").text
    for name in (
        "ignite_lstm_serve_frames_total",
        "ignite_lstm_serve_samples_total",
        "ignite_lstm_serve_step_batch_lanes_bucket",
        "ignite_lstm_serve_queue_seconds_bucket",
        "ignite_lstm_serve_compute_seconds_bucket",
        "ignite_lstm_serve_active_streams",
        "ignite_lstm_serve_evictions_total",
        "ignite_lstm_serve_snapshot_age_seconds",
        'ignite_lstm_serve_rejected_requests_total{code="400"}',
    ):
        assert name in text, name


def _wait_evicted(service, sid):
    deadline = time.monotonic() + 20
    while sid in service.streams and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sid not in service.streams


def test_idle_stream_is_evicted_to_the_state_dir_and_restored_at_its_next_frame(model_file, tmp_path):
    """Evicted, restored at its next frame (a retry included), evicted again, continued by the next server."""
    signal = mixture(60, seed=5)
    frames = split_frames(signal, [17, 3])
    with server_in_thread(model_file, state_dir=tmp_path, idle_evict=0.2) as (url, service):
        with httpx.Client(base_url=url) as client:
            sid = _create(client, 1.0)
            ys = [_post(client, sid, k, frames[k]).json()["y"] for k in range(3)]
            _wait_evicted(service, sid)
            assert (tmp_path / "evicted" / f"{sid}.json").is_file()
            assert client.get(f"/v1/streams/{sid}").json() == {
                "stream": sid,
                "frequency": 1.0,
                "next_seq": 3,
                "evicted": True,
            }
            again = _post(client, sid, 2, frames[2])  # its kept answer came back with it
            assert again.json()["y"] == ys[2]
            ys += [_post(client, sid, k, frames[k]).json()["y"] for k in range(3, 5)]
            assert service.metrics.evictions._value.get() >= 1 and service.metrics.restores._value.get() >= 1
            _wait_evicted(service, sid)  # out of memory when this server stops
    with server_in_thread(model_file, state_dir=tmp_path) as (url, service), httpx.Client(base_url=url) as client:
        assert service.recovery["streams"] == {sid: 5} and sid in service.evicted
        ys += [_post(client, sid, k, frames[k]).json()["y"] for k in range(5, len(frames))]
    assert_matches([v for y in ys for v in y], offline(model_file, signal, 1.0))


def test_onnx_step_file_is_served_in_chunks_of_its_batch(model_file, tmp_path):
    """An ONNX step graph of batch 3 serving 5 streams: a full chunk and a padded one, within 1e-6 of extract."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from ignite_lstm.app.export import main as export_main

    onnx_file = tmp_path / "step.onnx"
    assert export_main([str(model_file), "--output", str(onnx_file), "--batch", "3"]) == 0
    freqs = [1.0, 3.0, 5.0, 7.0, 3.0]
    signals = [mixture(45, seed=i + 1) for i in range(5)]
    frames = [split_frames(signals[i], [9, 2, 4])[:6] for i in range(5)]  # six frames each
    with server_in_thread(onnx_file, max_batch=5, max_wait=60.0) as (url, service):
        assert service.model.describe()["backend"] == "onnxruntime"

        async def one(client, i):
            sid = (await client.post("/v1/streams", json={"frequency": freqs[i]})).json()["stream"]
            return [
                v
                for k, x in enumerate(frames[i])
                for v in (await client.post(f"/v1/streams/{sid}/frames", json={"seq": k, "x": x})).json()["y"]
            ]

        async def all_streams():
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                return await asyncio.gather(*(one(client, i) for i in range(5)))

        outputs = asyncio.run(all_streams())
        assert service.metrics.batch_lanes._sum.get() == 5 * 6  # every call held the five streams
    for i in range(5):
        n = sum(len(x) for x in frames[i])
        np.testing.assert_allclose(
            np.asarray(outputs[i], np.float32), offline(model_file, signals[i][:n], freqs[i]), rtol=0, atol=1e-6
        )


def test_a_model_without_frequencies_takes_feature_vectors(model_file, tmp_path):
    """A checkpoint without config: streams without a frequency, frames of F-vectors, y as vectors."""
    import torch

    bare = torch.load(model_file, weights_only=False)
    del bare["config"]
    torch.save(bare, tmp_path / "bare.pt")
    from ignite_lstm.models.lstm import load_model

    model, _ = load_model(tmp_path / "bare.pt")
    x = np.random.default_rng(0).normal(size=(9, 5)).astype(np.float32)
    with torch.inference_mode():
        state, ref = None, []
        for x_t in torch.from_numpy(x):
            y_t, state = model.step(x_t[None], state)
            ref.append(y_t[0])
        ref = torch.stack(ref).numpy()  # (9, 1)
    with server_in_thread(tmp_path / "bare.pt") as (url, _), httpx.Client(base_url=url) as client:
        assert client.get("/v1/model").json()["task"] == "features"
        assert client.post("/v1/streams", json={"frequency": 3}).status_code == 400
        sid = client.post("/v1/streams", json={}).json()["stream"]
        r = _post(client, sid, 0, [[1.0, 2.0]])
        assert r.status_code == 400 and "feature vectors of 5 numbers" in r.json()["error"]
        y = _post(client, sid, 0, x[:4].tolist()).json()["y"] + _post(client, sid, 1, x[4:].tolist()).json()["y"]
    assert_matches(np.asarray(y, np.float32), ref)


def test_command_refuses_bad_input_with_exit_2(model_file, tmp_path, capsys):
    from ignite_lstm.app.serve import main

    empty = tmp_path / "token"
    empty.write_text("\n")
    cases = [
        ([str(tmp_path / "missing.pt")], "does not exist"),
        ([str(model_file), "--max-batch", "0"], "--max-batch should be a positive integer, got 0"),
        ([str(model_file), "--max-wait-ms", "nan"], "--max-wait-ms should be a number >= 0, got nan"),
        ([str(model_file), "--token-file", str(empty)], "should hold one token (no spaces), got nothing"),
        ([str(model_file), "--port", "70000"], "--port should be in [0, 65535], got 70000"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        assert message in capsys.readouterr().err
