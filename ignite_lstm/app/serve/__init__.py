"""Serving live streams: the trained filter behind an HTTP and WebSocket API (``ignite-lstm serve``).

Framework: Starlette on uvicorn (exact versions in requirements.txt, the ``serve`` extra in
setup.cfg). Starlette rather than FastAPI: the API is nine routes with hand-checked JSON
(the error messages name the field and the value), so FastAPI's pydantic layer would add
a dependency and per-request validation cost without use; Starlette is what FastAPI runs on,
small, and speaks ASGI WebSockets. uvicorn: the ASGI server both document, with
``websockets`` for the WebSocket protocol and, when installed, uvloop and httptools; its
graceful shutdown (stop listening, finish the requests in progress) is what the stop needs.
Versions are pinned because a stateful server's stop and retry behaviour rides on the
server's shutdown order, which has changed between uvicorn releases.

Modules: ``model`` (the model and its batched numpy steps), ``batching`` (one model call for
many streams' frames), ``batcher`` (the batching task under a latency deadline), ``streams``
(a stream's state, the state folder), ``service`` (the streams, retries, snapshots,
eviction), ``metrics`` (Prometheus), ``api`` (Starlette routes, frame checks), ``ws`` (the
WebSocket path on ASGI), ``errors``, ``cli`` (``main``, ``build_parser``).
"""

from ignite_lstm.app.serve.cli import build_parser, main

__all__ = ["build_parser", "main"]
