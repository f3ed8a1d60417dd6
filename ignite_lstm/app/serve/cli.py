"""``python -m ignite_lstm.app.serve MODEL [options]``: serve live streams over HTTP and WebSocket.

MODEL is a run folder, a ``model.pt`` or checkpoint, or an ONNX step file written by the
``export`` command. The server listens on ``--host`` (default 127.0.0.1) and ``--port`` (0: a
free port), prints ``Serving MODEL on http://HOST:PORT``, and keeps every stream's state in
memory and, with ``--state-dir``, on disk (periodic snapshots, idle eviction, a full write at
SIGTERM or SIGINT). A server started again on the same ``--state-dir`` continues every stream
and prints, per stream, which frame comes next.

SIGTERM / SIGINT: the listening socket closes, the requests in progress are answered, every
frame accepted is stepped and kept, all streams are written (``state.json``, ``"clean": true``)
and the process exits 0. A second SIGINT skips waiting for slow clients (the streams are still
written).

Exit status: 0 stopped by a signal (every stream written), 1 the streams could not be written
at the stop, 2 bad input (model, options, token file, state folder written for another model
or in use by another server, address in use).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import math
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import torch
import uvicorn

from ignite_lstm.app.config.schema import ConfigError
from ignite_lstm.app.serve.api import create_app
from ignite_lstm.app.serve.model import load_served_model
from ignite_lstm.app.serve.service import Limits, StreamService
from ignite_lstm.app.serve.streams import StateDir

__all__ = ["build_parser", "main"]

logger = logging.getLogger("ignite_lstm.serve")


class _Server(uvicorn.Server):
    """uvicorn's server, stopping on SIGTERM/SIGINT without re-raising the signal afterwards (exit 0).

    Its shutdown first tells the service to drain (the frames of the requests it waits for run
    at once), then lets uvicorn close the listener and finish the requests in progress.
    """

    def __init__(self, config: uvicorn.Config, service: StreamService) -> None:
        super().__init__(config)
        self.service = service

    async def shutdown(self, sockets=None) -> None:
        self.service.drain()
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def build_parser(prog: str = "ignite-lstm serve") -> argparse.ArgumentParser:
    """The command's options (``ignite-lstm serve`` reuses them).

    Args:
        prog: the program name shown in the usage line.

    Returns:
        The parser.
    """
    p = argparse.ArgumentParser(
        prog=prog,
        description="Serve a trained filter to live streams over HTTP and WebSocket, the state of "
        "every stream kept by the server, batched across streams, kept across restarts.",
        epilog=f"Example: {prog} runs/base-x --port 8000 --state-dir serve-state (protocol: docs/serving.md)",
    )
    p.add_argument("model", metavar="MODEL", help="run folder, model.pt or checkpoint, or ONNX step file (.onnx)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: a free port, printed)")
    p.add_argument(
        "--state-dir",
        help="folder for the streams' state: snapshots, evicted streams, the write at "
        "stop (without it streams live in memory only)",
    )
    p.add_argument(
        "--token-file",
        help="file holding a bearer token; every request but /healthz must send 'Authorization: Bearer <token>'",
    )
    g = p.add_argument_group("batching and limits")
    g.add_argument("--max-batch", type=int, default=1024, help="streams per batched model call (default 1024)")
    g.add_argument(
        "--max-wait-ms",
        type=float,
        default=2.0,
        help="latency deadline: the longest a frame waits for others to join its model call, ms (default 2)",
    )
    g.add_argument("--max-frame-samples", type=int, default=4096, help="samples per frame (default 4096; more: 413)")
    g.add_argument(
        "--max-streams", type=int, default=10000, help="streams held, in memory and evicted (default 10000; more: 429)"
    )
    g.add_argument(
        "--max-queue", type=int, default=8192, help="frames accepted and not yet answered (default 8192; more: 429)"
    )
    g.add_argument(
        "--idle-evict",
        type=float,
        default=300.0,
        help="seconds without a frame before a stream is "
        "written to --state-dir and leaves memory (default 300; 0: never)",
    )
    g.add_argument(
        "--snapshot-interval",
        type=float,
        default=5.0,
        help="seconds between snapshots of all "
        "streams to --state-dir, what a SIGKILL loses at most (default 5; 0: none)",
    )
    g.add_argument("--keep-answers", type=int, default=4, help="answers kept per stream for retried frames (default 4)")
    g.add_argument(
        "--naive",
        action="store_true",
        help="no batching: one model call per frame in its request (the benchmark's baseline)",
    )
    g.add_argument("--threads", type=int, default=1, help="torch threads for the model calls (default 1)")
    g.add_argument("--graceful-timeout", type=float, default=30.0, help="seconds to wait for clients at a stop")
    m = p.add_argument_group("a checkpoint without config")
    m.add_argument("--frequencies", help="the filter's frequencies, e.g. 1,3,5,7 (else: a feature model)")
    m.add_argument("--input-scale", type=float, help="the training data.input_scale (with --frequencies)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return p


def _limits(args: argparse.Namespace) -> Limits:
    for name in ("max_batch", "max_frame_samples", "max_streams", "max_queue", "keep_answers", "threads"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} should be a positive integer, got {getattr(args, name)}.")
    for name in ("max_wait_ms", "idle_evict", "snapshot_interval", "graceful_timeout"):
        value = getattr(args, name)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"--{name.replace('_', '-')} should be a number >= 0, got {value}.")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port should be in [0, 65535], got {args.port}.")
    return Limits(
        max_batch=args.max_batch,
        max_wait=args.max_wait_ms / 1000.0,
        max_frame_samples=args.max_frame_samples,
        max_streams=args.max_streams,
        max_queue=args.max_queue,
        idle_evict=args.idle_evict,
        snapshot_interval=args.snapshot_interval,
        keep_answers=args.keep_answers,
        naive=args.naive,
    )


def _token(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--token-file {path} could not be read: {exc}") from None
    if not token or any(ch.isspace() for ch in token):
        raise ValueError(
            f"--token-file {path} should hold one token (no spaces), got {'nothing' if not token else 'several words'}."
        )
    return token


def _loop_factory():
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


async def _run(service: StreamService, server: _Server, sock: socket.socket) -> None:
    await service.start()
    try:
        await server.serve(sockets=[sock])
    finally:
        await service.stop()


def main(argv: Sequence[str] | None = None, prog: str = "ignite-lstm serve") -> int:
    """Serve until SIGTERM or SIGINT (``ignite-lstm serve``, ``python -m ignite_lstm.app.serve``).

    Args:
        argv: the arguments (default ``sys.argv[1:]``).
        prog: the program name shown in the usage line.

    Returns:
        0 after a stop by signal (every stream written), 1 if the streams could not be written then,
        2 for bad input (message on stderr).
    """
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        limits = _limits(args)
        token = _token(args.token_file)
        freqs = None
        if args.frequencies is not None:
            try:
                freqs = [float(f) for f in args.frequencies.split(",")]
            except ValueError:
                raise ValueError(f"--frequencies {args.frequencies!r} should be numbers separated by commas.") from None
        torch.set_num_threads(args.threads)
        model = load_served_model(args.model, frequencies=freqs, input_scale=args.input_scale)
        state_dir = None if args.state_dir is None else StateDir(args.state_dir, model.fingerprint)
        service = StreamService(model, limits, state_dir)
        for line in service.load():
            print(line, flush=True)
        sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((args.host, args.port))
            sock.listen(2048)  # connections queue from now on: the address printed below is usable at once
        except OSError as exc:
            sock.close()
            raise ValueError(f"Cannot listen on {args.host}:{args.port}: {exc}.") from None
    except (OSError, ValueError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if state_dir is None:
        logger.warning("No --state-dir: the streams live in memory only (lost at a stop; no eviction).")
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        create_app(service, token=token),
        lifespan="off",
        ws="websockets-sansio",
        access_log=False,
        log_level=args.log_level,
        timeout_graceful_shutdown=args.graceful_timeout,
        ws_max_size=limits.max_frame_samples * 64 + 1024,
        ws_per_message_deflate=False,
    )  # small float frames: deflate costs CPU, saves little
    print(
        f"Serving {model.source} on http://{host}:{port} ({'naive, unbatched' if limits.naive else 'batched'}; "
        f"state: {state_dir.path if state_dir else 'memory only'})",
        flush=True,
    )
    gc.collect()
    gc.freeze()  # the model, torch and the libraries are long-lived: full collections skip them (latency tail)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(_run(service, _Server(config, service), sock))
    except OSError as exc:  # the state could not be written at the stop (a full disk, a lost folder)
        print(
            f"error: the streams could not be written to {state_dir.path if state_dir else '?'}: {exc}; a "
            f"restart continues from the last snapshot there.",
            file=sys.stderr,
        )
        return 1
    print(
        f"Stopped; {len(service.streams) + len(service.evicted)} stream(s) kept"
        f"{' in ' + str(state_dir.path) if state_dir else ''}.",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
