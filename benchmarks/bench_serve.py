"""Load benchmark of the streaming server: N real-time streams, batched server next to the naive design.

Each stream is a real-time source at the task's rate: 1,000 samples per second in frames
of 20 ms (20 samples), frame k sent at its scheduled time t0 + offset + k * 20 ms (offsets
spread over one frame period), whatever the answers do. Latency is from the scheduled
time to the answer's arrival, so a server (or load generator) that falls behind shows it.
Paths:

- ``ws``: one WebSocket per stream (the ``websockets`` client), frames pipelined;
- ``http``: one keep-alive HTTP/1.1 connection per stream, ``POST .../frames``, one frame in
  flight (a minimal asyncio client written here: httpx costs more CPU per request than the
  server does, and the load generator shares the machine).

Designs, in the same run, the same server code, one after the other:

- ``batched``: the server as deployed (frames of all waiting streams in one model call);
- ``naive``: ``--naive``, one unbatched model call per frame (batch 1, the frame's 20 steps in
  one call of the native kernel, as the batched server makes its calls), in its request.

For each design and path, N rises through ``--levels`` until saturation: answered frames
below 95 % of those offered, or p99 over ``--stop-p99-ms``. Per level: offered and answered
frames per second, p50 and p99 latency, the mean step-batch size (rows per model step, from the
server's /metrics), the CPU used by the server and the load generator (cores), the server's
CPU time per answered frame, and the machine's load average (other work on it shows there).

The load generator runs on the same machine as the server (one process, asyncio and uvloop);
on a 2-core machine it takes a large share of the CPU: the figures include that. The run is
bounded: ``--seconds`` per level (after ``--warmup``), ``--budget`` seconds in all.

Model: ``--model`` (a run folder or model.pt), else ``StatefulLSTM(5 -> --hidden x 1 -> 1)``
(the base preset's size, 128) with seeded random weights: the cost of a step depends on the
sizes only.

    python benchmarks/bench_serve.py                        # full
    python benchmarks/bench_serve.py --levels 1,50,100,200 --seconds 3 --budget 200   # short

``--compute`` measures the model side alone, in this process, without HTTP: one batched call
(``run_lanes``) of B streams' 20-sample frames, per frame, for B = 1 (the naive design's call)
up to 400, through the sequence call and through ``model.step`` per sample, each also while
another thread runs pure Python (as the event loop does), to show what re-taking the GIL
after every sample costs.

``--profile N`` runs the batched server under cProfile with N WebSocket streams instead and
prints where the server's event loop spends its time (the model runs in a worker thread,
not in this profile; its time is the compute_seconds histogram).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FRAME, PERIOD = 20, 0.020  # samples per frame, seconds per frame (1,000 samples per second)


def _machine() -> str:
    name = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} CPUs"


def _write_model(folder: Path, hidden: int) -> Path:
    import torch
    from omegaconf import OmegaConf

    from ignite_lstm.app.config.schema import validate_config
    from ignite_lstm.models.lstm import StatefulLSTM

    torch.manual_seed(0)
    model = StatefulLSTM(input_size=5, hidden_size=hidden)
    cfg = validate_config({"model": {"hidden_size": hidden}})
    torch.save(
        {"model": model.state_dict(), "model_args": model.config, "config": OmegaConf.to_container(cfg)},
        folder / "model.pt",
    )
    return folder / "model.pt"


class Server:
    """The server as a subprocess (``python -m ignite_lstm.app.serve``)."""

    def __init__(self, model: Path, extra: list[str], log: Path, profile: Path | None = None) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
        prefix = [sys.executable] + (["-m", "cProfile", "-o", str(profile)] if profile else [])
        self.log = log
        self.proc = subprocess.Popen(
            prefix + ["-m", "ignite_lstm.app.serve", str(model), "--port", "0", "--log-level", "warning", *extra],
            stdout=open(log, "w"),
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
        deadline = time.monotonic() + 60
        while not (m := re.search(r"on http://([\d.]+):(\d+)", log.read_text())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{log.read_text()}")
            time.sleep(0.05)
        self.host, self.port = m.group(1), int(m.group(2))

    def cpu(self) -> float:
        """CPU seconds used so far (user + system, all threads)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def _request(reader, writer, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = re.search(rb"(?i)content-length: *(\d+)", head)  # none on a 204
    return status, await reader.readexactly(int(length.group(1))) if length else b""


def _messages(n_frames: int, seed: int) -> list[str]:
    """The frames of one stream as JSON text, built before the clock starts."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_frames * FRAME) / 1000.0
    s = np.mean([np.sin(2 * np.pi * f * t + 0.01 * rng.uniform(0, 2 * np.pi, t.shape)) for f in (1, 3, 5, 7)], 0)
    s = s.astype(np.float32).astype(float)
    return [f'{{"seq":{k},"x":{json.dumps(s[k * FRAME : (k + 1) * FRAME].tolist())}}}' for k in range(n_frames)]


async def _level(server: Server, path: str, n: int, seconds: float, warmup: float) -> dict:
    import websockets.asyncio.client as wsc

    host, port = server.host, server.port
    reader, writer = await asyncio.open_connection(host, port)
    ids = []
    for _ in range(n):
        _, body = await _request(reader, writer, "POST", "/v1/streams", b'{"frequency": 3}')
        ids.append(json.loads(body)["stream"])
    n_frames = int((warmup + seconds) / PERIOD)
    messages = [_messages(n_frames, i) for i in range(min(n, 16))]  # 16 signals, shared by the streams
    t0 = time.monotonic() + 1.0  # every connection opens first
    window = (t0 + warmup, t0 + warmup + seconds)
    latencies: list[float] = []
    answered = [0]  # answers arriving inside the window: the throughput the server sustains

    def record(k: int, offset: float, now: float) -> None:
        sched = t0 + offset + k * PERIOD
        if window[0] <= sched < window[1]:
            latencies.append(now - sched)
        if window[0] <= now < window[1]:
            answered[0] += 1

    async def ws_stream(i: int) -> None:
        offset, texts = (i % 50) * PERIOD / 50, messages[i % len(messages)]
        async with wsc.connect(f"ws://{host}:{port}/v1/streams/{ids[i]}/ws", compression=None, max_queue=None) as ws:

            async def receive():
                for _ in range(n_frames):
                    msg = await ws.recv()
                    record(int(msg[7 : msg.index(",", 7)]), offset, time.monotonic())

            receiver = asyncio.create_task(receive())
            for k in range(n_frames):
                delay = t0 + offset + k * PERIOD - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await ws.send(texts[k])
            try:
                await asyncio.wait_for(receiver, 5.0)
            except TimeoutError:
                pass

    async def http_stream(i: int) -> None:
        offset, texts = (i % 50) * PERIOD / 50, messages[i % len(messages)]
        r, w = await asyncio.open_connection(host, port)
        url = f"/v1/streams/{ids[i]}/frames"
        while time.monotonic() < t0 - 0.5:
            await asyncio.sleep(0.05)
        for k in range(n_frames):
            delay = t0 + offset + k * PERIOD - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            status, _ = await _request(r, w, "POST", url, texts[k].encode())
            if status == 200:
                record(k, offset, time.monotonic())
        w.close()

    gc.collect()
    gc.freeze()  # the load generator's own latency tail: no full collections over the libraries
    metrics_before = await _server_metrics(reader, writer)
    run = asyncio.gather(*((ws_stream if path == "ws" else http_stream)(i) for i in range(n)))
    await asyncio.sleep(max(0.0, window[0] - time.monotonic()))
    cpu0, own0, wall0 = server.cpu(), time.process_time(), time.monotonic()
    await asyncio.sleep(max(0.0, window[1] - time.monotonic()))
    cpu1, own1, wall1 = server.cpu(), time.process_time(), time.monotonic()
    await run
    writer.close()  # idle past uvicorn's keep-alive timeout: a new control connection
    reader, writer = await asyncio.open_connection(host, port)
    metrics_after = await _server_metrics(reader, writer)
    for sid in ids:
        await _request(reader, writer, "DELETE", f"/v1/streams/{sid}")
    writer.close()
    offered = n * round(seconds / PERIOD)
    lat = sorted(latencies) + [float("inf")] * max(0, offered - len(latencies))  # unanswered: infinitely late
    calls = metrics_after["steps_total"] - metrics_before["steps_total"]
    rows = metrics_after["step_rows_total"] - metrics_before["step_rows_total"]
    return {
        "path": path,
        "streams": n,
        "offered_fps": offered / seconds,
        "answered_fps": answered[0] / seconds,
        "p50_ms": 1e3 * lat[len(lat) // 2] if lat else float("nan"),
        "p99_ms": 1e3 * lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan"),
        "step_batch": rows / calls if calls else float("nan"),
        "server_cpu": (cpu1 - cpu0) / (wall1 - wall0),
        "loadgen_cpu": (own1 - own0) / (wall1 - wall0),
        "server_us_per_frame": 1e6 * (cpu1 - cpu0) / max(1, answered[0] * (wall1 - wall0) / seconds),
        "loadgen_us_per_frame": 1e6 * (own1 - own0) / max(1, answered[0] * (wall1 - wall0) / seconds),
        "load_average": os.getloadavg()[0],
    }


async def _server_metrics(reader, writer) -> dict:
    _, body = await _request(reader, writer, "GET", "/metrics")
    out = {}
    for name in ("steps_total", "step_rows_total"):
        out[name] = float(re.search(rf"^ignite_lstm_serve_{name} (\S+)$".encode(), body, re.MULTILINE).group(1))
    return out


def _print_row(design: str, r: dict) -> None:
    print(
        f"{design:8s} {r['path']:4s} {r['streams']:6d} {r['offered_fps']:9.0f} {r['answered_fps']:9.0f} "
        f"{r['p50_ms']:8.1f} {r['p99_ms']:8.1f} {r['step_batch']:8.1f} {r['server_cpu']:7.2f} "
        f"{r['loadgen_cpu']:7.2f} {r['server_us_per_frame']:7.0f} {r['load_average']:5.1f}",
        flush=True,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--levels",
        default="1,10,25,50,75,100,150,200,250,300,400,600,800",
        help="stream counts N, rising (default 1,10,25,50,75,100,150,200,250,300,400,600,800)",
    )
    p.add_argument("--paths", default="ws,http", help="ws, http or both (default ws,http)")
    p.add_argument("--designs", default="batched,naive", help="batched, naive or both (default both)")
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per level (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before the measurement (default 1)")
    p.add_argument("--stop-p99-ms", type=float, default=200.0, help="saturated past this p99 (default 200 ms)")
    p.add_argument("--budget", type=float, default=600.0, help="seconds for the whole run (default 600)")
    p.add_argument("--hidden", type=int, default=128, help="hidden size of the generated model (default 128)")
    p.add_argument("--model", help="serve this run folder or model.pt instead")
    p.add_argument("--server-args", default="", help="more server options, e.g. '--max-wait-ms 5'")
    p.add_argument("--profile", type=int, help="profile the batched server at this many WebSocket streams")
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.add_argument("--compute", action="store_true", help="measure the model calls alone (see above)")
    args = p.parse_args()
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = asyncio.new_event_loop
    start = time.monotonic()
    levels = [int(v) for v in args.levels.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = Path(args.model) if args.model else _write_model(tmp, args.hidden)
        print(
            f"Machine: {_machine()}; load average {os.getloadavg()[0]:.2f} at the start. The load generator "
            f"runs on this machine, in this process.\nModel: {model}; frames of {FRAME} samples every "
            f"{PERIOD * 1e3:.0f} ms per stream; {args.seconds:g} s measured per level after {args.warmup:g} s."
        )
        if args.compute:
            _compute(model)
            return
        if args.profile:
            prof = tmp / "server.prof"
            server = Server(model, ["--idle-evict", "0"] + args.server_args.split(), tmp / "server.log", prof)
            try:
                with asyncio.Runner(loop_factory=loop_factory) as runner:
                    r = runner.run(_level(server, "ws", args.profile, args.seconds, args.warmup))
            finally:
                server.stop()
            _print_row("batched", r)
            import pstats

            pstats.Stats(str(prof)).sort_stats("tottime").print_stats(25)
            return
        print(
            f"{'design':8s} {'path':4s} {'N':>6s} {'offered/s':>9s} {'answer/s':>9s} {'p50 ms':>8s} "
            f"{'p99 ms':>8s} {'rows/step':>8s} {'srv cpu':>7s} {'gen cpu':>7s} {'srv µs/f':>7s} {'load':>5s}"
        )
        rows = []
        for design in args.designs.split(","):
            extra = ["--state-dir", str(tmp / f"state-{design}"), "--idle-evict", "0"] + args.server_args.split()
            server = Server(model, extra + (["--naive"] if design == "naive" else []), tmp / f"{design}.log")
            try:
                for path in args.paths.split(","):
                    for n in levels:
                        if time.monotonic() - start > args.budget:
                            print(f"(budget of {args.budget:g} s spent: stopping)")
                            break
                        with asyncio.Runner(loop_factory=loop_factory) as runner:
                            r = runner.run(_level(server, path, n, args.seconds, args.warmup))
                        r["design"] = design
                        rows.append(r)
                        _print_row(design, r)
                        if r["answered_fps"] < 0.95 * r["offered_fps"] or r["p99_ms"] > args.stop_p99_ms:
                            break
            finally:
                server.stop()
        _summary(rows)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))


def _compute(model_file: Path) -> None:
    import threading

    import torch

    from ignite_lstm.app.serve.batching import Frame, Lane, run_lanes
    from ignite_lstm.app.serve.model import load_served_model
    from ignite_lstm.app.serve.streams import Stream

    torch.set_num_threads(1)

    class StepOnly:  # the model seen through step() alone: one call per sample
        def __init__(self, m):
            self.m, self.config = m, m.config

        def step(self, x_t, state):
            return self.m.step(x_t, state)

    sequence, per_step = load_served_model(model_file), load_served_model(model_file)
    per_step.stepper = StepOnly(per_step.stepper)
    rng = np.random.default_rng(0)
    stop = threading.Event()

    def busy():
        while not stop.is_set():
            sum(range(200))

    print(f"{'calls':26s} {'busy thread':>11s} {'B':>4s} {'ms/call':>8s} {'µs/frame':>9s}  (median of 9)")
    for busy_on in (False, True):
        stop.clear()
        thread = threading.Thread(target=busy)
        if busy_on:
            thread.start()
        for name, model in (("sequence call per segment", sequence), ("model.step per sample", per_step)):
            for B in (1, 10, 50, 100, 200, 400):
                lanes = []
                for i in range(B):
                    h, c = model.zero_state()
                    s = Stream(f"{i:016x}", 1, 3.0, h, c)
                    lanes.append(Lane(s, [Frame(s, 0, rng.normal(size=FRAME).astype(np.float32), "", None)]))
                run_lanes(model, lanes)
                times = []
                for _ in range(9):
                    start = time.perf_counter()
                    run_lanes(model, lanes)
                    times.append(time.perf_counter() - start)
                t = sorted(times)[4]
                print(f"{name:26s} {busy_on!s:>11s} {B:4d} {1e3 * t:8.2f} {1e6 * t / B:9.1f}", flush=True)
        stop.set()
        if busy_on:
            thread.join()


def _summary(rows: list[dict]) -> None:
    print("\nSummary (load generator on the same machine):")
    for path in ("ws", "http"):
        best = {}
        for design in ("batched", "naive"):
            mine = [r for r in rows if r["design"] == design and r["path"] == path]
            if not mine:
                continue
            ok = [r["streams"] for r in mine if r["p99_ms"] <= 50 and r["answered_fps"] >= 0.99 * r["offered_fps"]]
            top = max(mine, key=lambda r: r["answered_fps"])
            best[design] = top["answered_fps"]
            cost = top["server_us_per_frame"] + top["loadgen_us_per_frame"]
            print(
                f"  {path:4s} {design:8s}: most streams at p99 <= 50 ms: {max(ok) if ok else 0}; "
                f"highest throughput {best[design]:.0f} frames/s ({best[design] * FRAME:.0f} samples/s) at N = "
                f"{top['streams']}; CPU per frame there: server {top['server_us_per_frame']:.0f} µs + load "
                f"generator {top['loadgen_us_per_frame']:.0f} µs, so 2 free cores carry at most "
                f"{2e6 / cost:.0f} frames/s ({2e6 / cost / 50:.0f} streams; a bound, not a measurement)"
            )
        if len(best) == 2 and best["naive"] > 0:
            print(f"  {path:4s} batched / naive throughput: {best['batched'] / best['naive']:.1f}x")


if __name__ == "__main__":
    main()
